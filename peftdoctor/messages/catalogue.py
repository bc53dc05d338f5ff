"""The generated message catalogue (catalogue.json), and finding its mapped messages in a text.

Only entries the code tables (codes.py) give a finding code are searched for. Each is found in
linear time: in a text up to FILTER_MAX the words of its distinct lines are read once, and only the
entries whose key word (the longest whole word of their anchor) is among them are looked at further;
then the anchor, the longest literal fragment, is looked up with `str.rfind` (lower-cased text, so the
wording of releases that capitalised differently still matches), and only then is its bounded regex
run, on the lines around that one occurrence. Entries whose code came from their area (codes.AREAS)
are searched separately, and only when nothing more specific was recognised (causes.diagnose).
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from peftdoctor.messages.templates import anchor, matcher, parse

CATALOGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalogue.json")
WINDOW = 2048  # characters either side of the fragment's line a message may span (pasted logs re-wrap)
LINE_MAX = 4096  # longer lines are cut before matching: no message is that long
FILTER_MAX = 1_000_000  # texts up to this length are searched only for the messages whose words they hold


@dataclass(frozen=True)
class Message:
    id: str
    package: str
    kind: str
    template: str
    releases: tuple[str, ...]
    code: Optional[str]
    file: str
    area: Optional[str] = None  # the codes.AREAS reason when no MAP row names the message

    @functools.cached_property
    def key(self) -> str:
        """The longest whole word of the anchor (not one at its edge, which a hole may extend): a text
        without that word cannot hold the message. "" when there is none: always looked at."""
        whole = [m[0] for m in _WORD.finditer(self.anchor) if 0 < m.start() and m.end() < len(self.anchor)]
        return max((w for w in whole if len(w) >= 3), key=len, default="")

    @functools.cached_property
    def anchor(self) -> str:
        return anchor(parse(self.template))

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(matcher(parse(self.template)), re.IGNORECASE)

    def where(self) -> str:
        """'peft 0.3.0..0.13.2' (the releases this wording comes from)."""
        return f"{self.package} {', '.join(self.releases)}"


@dataclass(frozen=True)
class Hit:
    message: Message
    match: re.Match[str]

    def group(self, *names: str) -> str:
        """The first of `names` that is a hole of this template and matched."""
        groups = self.match.groupdict()
        return next((groups[n].strip() for n in names if groups.get(n)), "")


@functools.lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    with open(CATALOGUE, encoding="utf-8") as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=1)
def entries() -> tuple[Message, ...]:
    return tuple(Message(e["id"], e["package"], e["kind"], e["template"], tuple(e["releases"]), e["code"], e["file"],
                         e.get("area")) for e in load()["entries"])


@functools.lru_cache(maxsize=1)
def mapped() -> tuple[Message, ...]:
    """The entries a code is known for, longest anchor first (the most specific wording wins a tie)."""
    return tuple(sorted((m for m in entries() if m.code), key=lambda m: (-len(m.anchor), m.id)))


def prepare(text: str) -> str:
    """The text with every line cut to LINE_MAX: what all matching runs on."""
    if len(text) <= LINE_MAX and "\n" not in text:
        return text
    return "\n".join(line[:LINE_MAX] for line in text.split("\n"))


_WORD = re.compile(r"[a-z0-9_]+")


@functools.lru_cache(maxsize=1)
def _by_key() -> dict[str, tuple[Message, ...]]:
    keyed: dict[str, list[Message]] = {}
    for message in mapped():
        keyed.setdefault(message.key, []).append(message)
    return {k: tuple(v) for k, v in keyed.items()}


def candidates(lowered: str, area: bool = False) -> list[Message]:
    """The mapped messages whose key word, and then whose anchor, is in the text, in mapped() order. Logs
    repeat their lines: the distinct lines are read once, and where they are much shorter than the text
    an anchor is looked for there first (an anchor spanning lines is always looked for in the text)."""
    if len(lowered) > FILTER_MAX:  # reading every word of a long text costs more than the searches it saves
        return [m for m in mapped() if (m.area is not None) == area]
    keyed = _by_key()
    unique = "\n".join(set(lowered.split("\n")))
    words = set(_WORD.findall(unique))
    shorter = len(unique) * 2 < len(lowered)
    found = [m for key, ms in keyed.items() if key in words or key == "" for m in ms
             if (m.area is not None) == area and (not shorter or "\n" in m.anchor or m.anchor in unique)]
    order = {m.id: i for i, m in enumerate(mapped())}
    return sorted(found, key=lambda m: order[m.id])


def find(text: str, lowered: Optional[str] = None, area: bool = False) -> Iterator[Hit]:
    """Each mapped message found in `text` (already prepare()d), once, at its last occurrence: those a MAP row
    names, or (`area`) those whose code came from their area."""
    lowered = text.lower() if lowered is None else lowered
    for message in candidates(lowered, area):
        at = lowered.rfind(message.anchor)
        if at < 0:
            continue
        start = max(0, lowered.rfind("\n", 0, max(0, at - WINDOW)) + 1)
        end = lowered.find("\n", min(len(text), at + len(message.anchor) + WINDOW))
        end = len(text) if end < 0 else end
        match = None
        for m in message.regex.finditer(text, start, end):
            match = m
        if match is not None:
            yield Hit(message, match)
