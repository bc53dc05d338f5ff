"""The result of a streaming merge: plain frozen data, rendered as text or JSON (no torch here)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from peftdoctor.model.findings import FORMAT_VERSION

# Why the output equals peft's: each changed tensor is produced by peft's own merge_and_unload on a
# model holding just that module, from the same inputs in the same dtype on the same device, so the
# same kernels run in the same order. Tested bit-identical in float32 on CPU (tests/test_merge.py).
EQUALITY_CPU = ("bit-identical to peft's merge_and_unload + save_pretrained on {device} in {dtype}: each changed "
                "tensor is computed by peft's own merge on a one-module model, every other tensor is copied byte for byte")
EQUALITY_CUDA = ("same peft merge code and inputs as merge_and_unload on {device} in {dtype}; GPU matmul kernels may "
                 "be chosen per call, so equality with a full-model merge there is expected but not tested here")


@dataclass(frozen=True)
class MergeReport:
    adapter: str
    base: str
    out: str
    dtype: str  # "auto" (each tensor keeps the base's dtype) or the --dtype given
    device: str
    tensors_merged: int  # weights a LoRA delta was merged into
    tensors_replaced: int  # tensors replaced by the adapter's modules_to_save copies
    tensors_passed: int  # tensors copied unchanged (cast only when --dtype asks)
    bytes_written: int
    seconds: float
    peak_rss_bytes: int
    shards: int
    untied: tuple[str, ...] = ()  # tensors written explicitly because a tied layer was adapted
    equality: str = ""
    notes: tuple[str, ...] = field(default=())


def render_text(report: MergeReport) -> str:
    lines = [
        f"merged {report.adapter} into {report.base} -> {report.out}",
        f"  {report.tensors_merged} tensors merged, {report.tensors_replaced} replaced (modules_to_save), "
        f"{report.tensors_passed} passed through; {report.shards} shard(s), {report.bytes_written / 1e9:.2f} GB",
        f"  {report.seconds:.1f} s, peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB, dtype {report.dtype}, "
        f"device {report.device}",
        f"  equality: {report.equality}",
    ]
    if report.untied:
        lines.append(f"  untied: {', '.join(report.untied)} written separately; tie_word_embeddings set false "
                     "in config.json (a re-tied model would lose one trained matrix)")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def render_json(report: MergeReport) -> str:
    data = {"format_version": FORMAT_VERSION, "kind": "merge", **asdict(report)}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def equality_statement(device: str, dtype: str) -> str:
    template = EQUALITY_CPU if device == "cpu" else EQUALITY_CUDA
    return template.format(device=device, dtype=dtype)


def one_line(message: Optional[str]) -> str:
    return (message or "").strip().splitlines()[0] if message and message.strip() else "unknown error"
