"""`scan`: find every adapter under a tree (training checkpoints, a monorepo) and check each."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.model.adapter import CONFIG_NAME
from peftdoctor.model.findings import Report, Severity
from peftdoctor.ops.check import check

# Directories that never hold adapters worth checking, and can be huge.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".cache"})


@dataclass(frozen=True)
class ScanReport:
    root: str
    reports: tuple[Report, ...]
    unusable: tuple[tuple[str, str], ...]  # (path, one-line reason)

    def counts(self) -> list[tuple[str, Severity, int]]:
        """(code, severity, number of adapters with it), worst severity first, then most frequent."""
        seen: Counter[tuple[str, Severity]] = Counter()
        for report in self.reports:
            seen.update({(f.code, f.severity) for f in report.findings})
        return sorted(((c, s, n) for (c, s), n in seen.items()), key=lambda t: (-t[1].rank, -t[2], t[0]))

    def fails_at(self, threshold: Severity) -> bool:
        return bool(self.unusable) or any(r.fails_at(threshold) for r in self.reports)


def find_adapters(root: str) -> list[str]:
    """Directories under `root` holding adapter_config.json, in a stable order; symlinked dirs not followed."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        if CONFIG_NAME in files:
            found.append(directory)
    return found


def scan(root: str, peft: Optional[str] = None) -> ScanReport:
    if not os.path.isdir(root):
        raise UnusableInput(f"{root}: no such directory")
    reports, unusable = [], []
    for directory in find_adapters(root):
        try:
            reports.append(check(directory, peft=peft))
        except UnusableInput as exc:
            unusable.append((directory, str(exc)))
    return ScanReport(root, tuple(reports), tuple(unusable))

