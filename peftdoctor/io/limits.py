"""How large and how deep an adapter config may be before it is refused unread.

A config comes from a stranger and is judged by every rule, printed, rewritten and compared, so
its shape bounds the work of every command. Real configs have a few dozen keys, lists of module
names (a few thousand for a large mixture of experts, with rank_pattern as many) and a nesting
depth of three or four; the caps leave wide room above that and refuse the rest with one line,
instead of running for minutes (64,000 unknown keys took 8 s in `check` and over a minute in
`fix`) or ending in a RecursionError (nesting depth 979).
"""
from __future__ import annotations

from typing import Any, Optional

MAX_KEYS = 1_000  # top-level keys (peft's largest config class has 51 fields; fix is slow on 10,000)
MAX_ENTRIES = 100_000  # items of any one list or object inside it
MAX_VALUES = 1_000_000  # values in the whole document
MAX_DEPTH = 64  # lists and objects inside one another


def config_excess(data: Any) -> Optional[str]:
    """Why `data` (parsed JSON) is too large or too deep to be judged, in one line; None when it is not.

    Iterative, so that the check itself cannot exhaust the stack it protects."""
    if isinstance(data, dict) and len(data) > MAX_KEYS:
        return f"has {len(data):,} top-level keys (a real config has a few dozen; the cap is {MAX_KEYS:,})"
    pending: list[tuple[Any, int]] = [(data, 1)]
    values = 0
    while pending:
        value, depth = pending.pop()
        values += 1
        if values > MAX_VALUES:
            return f"holds more than {MAX_VALUES:,} values (the cap for an adapter config)"
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} levels deep (a real config has three or four)"
        if len(value) > MAX_ENTRIES:
            return f"holds a list or object of {len(value):,} entries (the cap is {MAX_ENTRIES:,})"
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children)
    return None
