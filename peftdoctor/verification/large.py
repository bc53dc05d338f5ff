"""Bases too large to load: verify hands the merge to the streaming merge instead.

Loading base + adapter and a float32 merge copy needs about the base's size in float32 of memory
(the two are loaded one after the other). When that is more than the machine has available, verify
loads the base with accelerate across the GPUs, the CPU and an offload folder when it can
(max_memory), else it verifies the streamed merge layer by layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peftdoctor.io.machine import BUDGET_VARIABLE, memory_available  # noqa: F401 (tests set the budget here)
from peftdoctor.model.base import Base

# Bytes per element as saved, to scale the checkpoint's size to the float32 it is merged in.
_SAVED_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# The share of each device's free memory that accelerate is not given: kept for the activations, the
# module a hook brings in from disk, the adapter, and whatever else the process holds.
HEADROOM = 0.2


def float32_bytes(base: Base) -> int:
    return dtype_bytes(base, "float32")


def dtype_bytes(base: Base, dtype: str) -> int:
    on_disk = sum(p.stat().st_size for p in Path(base.directory).glob("*.safetensors"))
    return on_disk * _SAVED_BYTES.get(dtype, 4) // _SAVED_BYTES.get(str(base.saved_dtype), 4)


def too_large(base: Base) -> Optional[str]:
    """Why the base cannot be loaded for the probe here, or None when it fits (or memory is unknown)."""
    available, needed = memory_available(), float32_bytes(base)
    if available is None or needed <= available:
        return None
    return (f"the base needs about {needed / 2**30:.1f} GiB in float32, {available / 2**30:.1f} GiB is "
            "available")


def max_memory(needed: int, gpus: dict[int, int], offload: bool) -> Optional[dict[Any, int]]:
    """accelerate's max_memory (each GPU's and the CPU's free memory less HEADROOM) when the base of
    `needed` bytes can be placed across the devices present, else None. With an offload folder whatever
    does not fit goes to disk; without one the GPUs and the CPU must hold it all (no GPU: nothing gained
    over what too_large already refused)."""
    available = memory_available()
    share = {i: int(free * (1 - HEADROOM)) for i, free in gpus.items()}
    share["cpu"] = int((available or 0) * (1 - HEADROOM))
    if offload:
        return share
    if not gpus or needed > sum(share.values()):
        return None
    return share


def size_text(n: int) -> str:
    """Bytes for a reader: "1.50 GiB", "23.4 KiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
