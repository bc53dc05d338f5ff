"""What this machine can hold: the memory available now, or the budget a user (or a test) sets."""
from __future__ import annotations

import os
from typing import Optional

# A deliberate override of what the machine reports, in bytes (tests, or a cgroup limit that
# /proc/meminfo does not show).
BUDGET_VARIABLE = "PEFTDOCTOR_MEMORY_BUDGET"


def memory_available() -> Optional[int]:
    """Bytes that can be allocated without swapping: the budget variable, else the kernel's
    MemAvailable (Linux), else None (unknown: callers then do not refuse)."""
    if os.environ.get(BUDGET_VARIABLE, "").isdigit():
        return int(os.environ[BUDGET_VARIABLE])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
