"""Streaming merge of a LoRA adapter into a base too large to load twice (see run.py)."""
from .command import merge_command
from .plan import MergeRefused
from .result import MergeReport
from .run import stream_merge

__all__ = ["MergeRefused", "MergeReport", "merge_command", "stream_merge"]
