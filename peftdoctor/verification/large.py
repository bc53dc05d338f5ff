"""Bases too large to load: verify hands the merge to the streaming merge instead.

Loading base + adapter and a float32 merge copy needs about the base's size in float32 of memory
(the two are loaded one after the other). When that is more than the machine has available,
verify cannot run the probe; it can still produce the merged model, shard by shard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from peftdoctor.io.machine import BUDGET_VARIABLE, memory_available  # noqa: F401 (tests set the budget here)
from peftdoctor.model.base import Base

# Bytes per element as saved, to scale the checkpoint's size to the float32 it is merged in.
_SAVED_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
def float32_bytes(base: Base) -> int:
    on_disk = sum(p.stat().st_size for p in Path(base.directory).glob("*.safetensors"))
    return on_disk * 4 // _SAVED_BYTES.get(str(base.saved_dtype), 4)


def too_large(base: Base) -> Optional[str]:
    """Why the base cannot be loaded for the probe here, or None when it fits (or memory is unknown)."""
    available, needed = memory_available(), float32_bytes(base)
    if available is None or needed <= available:
        return None
    return (f"the base needs about {needed / 2**30:.1f} GiB in float32, {available / 2**30:.1f} GiB is "
            "available")
