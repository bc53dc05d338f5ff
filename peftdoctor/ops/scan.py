"""`scan`: find every adapter under a tree (training checkpoints, a monorepo) and check each."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from peftdoctor.errors import UnusableInput
from peftdoctor.model.adapter import CONFIG_NAME
from peftdoctor.model.findings import FORMAT_VERSION, Report, Severity
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


def render_text(scan_report: ScanReport) -> str:
    reports = scan_report.reports
    clean = sum(1 for r in reports if not r.findings)
    lines = [f"{scan_report.root}: {len(reports)} adapter(s), {clean} clean"]
    counts = scan_report.counts()
    if counts:
        lines.append(f"  {'code':<6} {'severity':<8} {'adapters':>8}  meaning")
        from peftdoctor.rules.registry import RULES

        lines += [f"  {c:<6} {s.value:<8} {n:>8}  {RULES[c].summary}" for c, s, n in counts]
    worst = sorted((r for r in reports if r.findings), key=lambda r: (-(r.worst() or Severity.INFO).rank, r.path))
    for report in worst[:20]:
        codes = ", ".join(sorted({f.code for f in report.findings}))
        lines.append(f"  {(report.worst() or Severity.INFO).value:<8} {report.path}: {codes}")
    if len(worst) > 20:
        lines.append(f"  ... and {len(worst) - 20} more adapters with findings (use --format json)")
    lines += [f"  unusable {path}: {reason}" for path, reason in scan_report.unusable]
    return "\n".join(lines) + "\n"


def to_dict(scan_report: ScanReport) -> dict[str, Any]:
    from peftdoctor.render.report import to_dict as report_dict

    return {
        "format_version": FORMAT_VERSION,
        "root": scan_report.root,
        "adapters": len(scan_report.reports),
        "summary": [{"code": c, "severity": s.value, "adapters": n} for c, s, n in scan_report.counts()],
        "reports": [report_dict(r) for r in scan_report.reports],
        "unusable": [{"path": p, "reason": why} for p, why in scan_report.unusable],
    }
