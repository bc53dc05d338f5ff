"""Streaming merge of a LoRA adapter into a base too large to load twice (see run.py)."""
from peftdoctor.merge.command import merge_command
from peftdoctor.merge.plan import MergeRefused
from peftdoctor.merge.result import MergeReport
from peftdoctor.merge.run import stream_merge

__all__ = ["MergeRefused", "MergeReport", "merge_command", "stream_merge"]
