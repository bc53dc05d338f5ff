"""The result of a streaming merge: plain frozen data (no torch here); render/merge.py renders it."""
from __future__ import annotations

from dataclasses import dataclass, field

# Why the output equals peft's: each changed tensor is produced either by the torch calls peft's layer
# makes, in its order and dtypes (merge/delta.py: plain LoRA, rsLoRA, patterns, Conv1D, embeddings), or
# by peft's own merge_and_unload on a model holding just that module (DoRA, lora_bias, ...), from the
# same inputs in the same dtype on the same device. Tested bit-identical on CPU in float32 (tests/
# test_merge.py) and, layer by layer, in bfloat16 and float16 too (tests/test_merge_delta.py).
EQUALITY_CPU = ("bit-identical to peft's merge_and_unload + save_pretrained{model} on {device} in {dtype}: "
                "each changed tensor is computed by peft's operations in peft's order (or by peft's own layer "
                "code), every other tensor is copied byte for byte")
EQUALITY_CUDA = ("same peft merge code and inputs as merge_and_unload{model} on {device} in {dtype}; GPU matmul "
                 "kernels may be chosen per call, so equality with a full-model merge there is expected but not "
                 "tested here")


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


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# An adapted tensor tied to another (GPT-2's wte and lm_head, Gemma's embed_tokens and lm_head, BART's
# shared embeddings): merge_and_unload adds the delta into the one shared tensor, so the partner changes
# too and the merged model computes something else than base + adapter. This merge unties first (the
# partner keeps the base's values), so it equals peft's merge of a base untied before merging, not
# peft's merge of the tied base (tests/test_merge_ties.py shows both).
UNTIED = ("{adapted} was tied to {partners} in the base: untied before merging, {partners} kept the base's "
          "values, so the merged model computes base + adapter; peft's merge_and_unload on the tied base would "
          "also change {partners}, which share{s} the adapted tensor")


def equality_statement(device: str, dtype: str, ties: tuple[tuple[str, str], ...] = ()) -> str:
    """What the output equals; `ties`: (adapted tensor, its tie partner) for each tie undone."""
    template = EQUALITY_CPU if device == "cpu" else EQUALITY_CUDA
    partners: dict[str, list[str]] = {}
    for adapted, partner in ties:
        partners.setdefault(adapted, []).append(partner)
    untied = " and ".join(f"{', '.join(names)} untied from {adapted}" for adapted, names in partners.items())
    statement = template.format(device=device, dtype=dtype, model=f" of the base with {untied} first" if ties else "")
    return "; ".join([statement, *(UNTIED.format(adapted=adapted, partners=", ".join(names), s="" if len(names) > 1
                                                 else "s") for adapted, names in partners.items())])
