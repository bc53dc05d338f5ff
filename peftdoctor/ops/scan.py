"""`scan`: find every adapter under a tree (training checkpoints, a monorepo) and check each."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from peftdoctor.errors import UnusableInput, one_line
from peftdoctor.model.adapter import CONFIG_NAME
from peftdoctor.model.findings import Finding, Report, Severity
from peftdoctor.ops.check import check

# Directories that never hold adapters worth checking, and can be huge.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".cache"})
# Findings about how the adapter was judged, not about the adapter: they do not make it unclean.
JUDGING_NOTES = frozenset({"PD117", "PD455"})


@dataclass(frozen=True)
class ScanReport:
    root: str
    reports: tuple[Report, ...]  # with a spool, each without its compatibility table (bounded memory)
    unusable: tuple[tuple[str, str], ...]  # (path, one-line reason)
    spool: Optional[str] = None  # a file of every full report as one JSON line each, in `reports` order

    def counts(self) -> list[tuple[str, Severity, int]]:
        """(code, severity, number of adapters with it), worst severity first, then most frequent."""
        seen: Counter[tuple[str, Severity]] = Counter()
        for report in self.reports:
            seen.update({(f.code, f.severity) for f in report.findings})
        return sorted(((c, s, n) for (c, s), n in seen.items()), key=lambda t: (-t[1].rank, -t[2], t[0]))

    def fails_at(self, threshold: Severity) -> bool:
        return bool(self.unusable) or any(r.fails_at(threshold) for r in self.reports)

    def with_problems(self) -> list[Report]:
        """Reports with a finding about the adapter itself (judging notes such as PD117 aside)."""
        return [r for r in self.reports if problems(r)]


def problems(report: Report) -> tuple[Finding, ...]:
    return tuple(f for f in report.findings if f.code not in JUDGING_NOTES)


def natural_key(path: str) -> list[Any]:
    """checkpoint-200 before checkpoint-1000: digit runs compare as numbers."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path)]


def find_adapters(root: str, unreadable: Optional[list[tuple[str, str]]] = None) -> list[str]:
    """Directories under `root` holding an adapter_config.json entry (a file, or anything else in its
    place, which check then reports), in natural order; symlinked dirs not followed. Directories that
    cannot be listed go to `unreadable` as (path, reason) instead of vanishing silently."""
    def failed(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((exc.filename or root, f"cannot list directory: {exc.strerror or exc}"))

    found = []
    for directory, subdirs, files in os.walk(root, onerror=failed):
        if CONFIG_NAME in files or CONFIG_NAME in subdirs:
            found.append(directory)
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and d != CONFIG_NAME]
    return sorted(found, key=natural_key)


def scan(root: str, peft: Optional[str] = None, spool: Optional[str] = None) -> ScanReport:
    """Check every adapter under `root`. One adapter's failure, even a bug of ours, is its own
    `unusable` entry and never loses the others. With `spool` (a file path), every full report is
    written there as one JSON line as soon as it is made and the ScanReport keeps it without its
    compatibility table, so that memory stays bounded for trees of many thousands of adapters."""
    if spool is None:
        return _scan(root, peft, None)
    with open(spool, "w", encoding="utf-8") as lines:
        found = _scan(root, peft, lambda report: lines.write(json.dumps(as_dict(report), sort_keys=True) + "\n"))
    return replace(found, spool=spool)


def as_dict(report: Report) -> dict[str, Any]:
    from peftdoctor.render.report import to_dict  # the one JSON shape of a report

    return to_dict(report)


def _scan(root: str, peft: Optional[str], each: Optional[Callable[[Report], object]]) -> ScanReport:
    try:
        os.listdir(root)
    except OSError as exc:
        why = "no such directory" if isinstance(exc, FileNotFoundError) else f"cannot list directory: {exc.strerror}"
        raise UnusableInput(f"{root}: {why}") from None
    if not os.path.isdir(root):
        raise UnusableInput(f"{root}: no such directory")
    reports, unusable = [], []
    for directory in find_adapters(root, unusable):
        try:
            report = check(directory, peft=peft)
        except UnusableInput as exc:
            unusable.append((directory, str(exc)))
            continue
        except OSError as exc:  # a read the rules did not foresee failing (EIO, a name too long): its one line
            unusable.append((directory, one_line(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a bug of ours on one adapter must not lose the others
            unusable.append((directory, f"internal error: {type(exc).__name__} (please report this)"))
            continue
        if each is not None:
            each(report)
            report = replace(report, compatibility=())
        reports.append(report)
    return ScanReport(root, tuple(reports), tuple(sorted(unusable, key=lambda u: natural_key(u[0]))))
