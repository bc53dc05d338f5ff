"""What a recognised message means: its causes, ranked, and the bounded-window search every
decider runs its regexes through (linear in the text, however long)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

WINDOW_BEFORE, WINDOW_AFTER = 200, 700  # characters around a needle a message may take


@dataclass(frozen=True)
class Cause:
    code: str
    message: str
    fix: str


@dataclass(frozen=True)
class Diagnosis:
    causes: tuple[Cause, ...]  # ranked; empty: recognised, and not an adapter problem
    matched: str
    replaces: frozenset[str] = field(default_factory=frozenset)  # older-table codes this supersedes
    source: str = ""  # the catalogue entry (and its releases) the wording came from
    weak: bool = False  # a code given to a whole area of messages (codes.AREAS): only when nothing else is found


def make(matched: str, *causes: Cause, replaces: tuple[str, ...] = (), source: str = "",
         weak: bool = False) -> Diagnosis:
    return Diagnosis(tuple(causes), matched, frozenset(replaces), source, weak)


def regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def windows(text: str, lowered: str, needle: str, limit: int = 64) -> list[str]:
    """The text around each of the last `limit` occurrences of `needle` (lower case), oldest first.
    Regexes run on these bounded windows only, never on the whole text: linear however long it is."""
    found: list[str] = []
    end = len(lowered)
    while len(found) < limit:
        at = lowered.rfind(needle, 0, end)
        if at < 0:
            break
        found.append(text[max(0, at - WINDOW_BEFORE):at + len(needle) + WINDOW_AFTER])
        end = at
    return found[::-1]


def search(pattern: re.Pattern[str], text: str, lowered: str, needle: str) -> Optional[re.Match[str]]:
    """The last match of `pattern` in a window around `needle`."""
    for window in reversed(windows(text, lowered, needle, limit=8)):
        match = None
        for match in pattern.finditer(window):
            pass
        if match is not None:
            return match
    return None


