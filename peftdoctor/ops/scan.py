"""`scan`: find every adapter under a tree (training checkpoints, a monorepo) and check each."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from peftdoctor.io.adapter import CONFIG_NAME, UnusableInput
from peftdoctor.model.findings import FORMAT_VERSION, Finding, Report, Severity
from peftdoctor.ops.check import check

# Directories that never hold adapters worth checking, and can be huge.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".cache"})
# Findings about how the adapter was judged, not about the adapter: they do not make it unclean.
JUDGING_NOTES = frozenset({"PD117"})


@dataclass(frozen=True)
class ScanReport:
    root: str
    reports: tuple[Report, ...]  # with `scan(each=...)`, each without its compatibility (bounded memory)
    unusable: tuple[tuple[str, str], ...]  # (path, one-line reason)

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


def scan(root: str, peft: Optional[str] = None, each: Optional[Callable[[Report], None]] = None) -> ScanReport:
    """Check every adapter under `root`. One adapter's failure, even a bug of ours, is its own
    `unusable` entry and never loses the others. With `each`, every full report is handed to it
    as soon as it is made and the ScanReport keeps it without its compatibility table, so that
    memory stays bounded for trees of many thousands of adapters."""
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
        except Exception as exc:  # noqa: BLE001 - a bug of ours on one adapter must not lose the others
            unusable.append((directory, f"internal error: {type(exc).__name__} (please report this)"))
            continue
        if each is not None:
            each(report)
            report = replace(report, compatibility=())
        reports.append(report)
    return ScanReport(root, tuple(reports), tuple(sorted(unusable, key=lambda u: natural_key(u[0]))))


def render_text(scan_report: ScanReport) -> str:
    reports = scan_report.reports
    worst = sorted(scan_report.with_problems(), key=lambda r: (-_worst(r).rank, natural_key(r.path)))
    lines = [f"{scan_report.root}: {len(reports)} adapter(s), {len(reports) - len(worst)} clean"]
    counts = scan_report.counts()
    if counts:
        lines.append(f"  {'code':<6} {'severity':<8} {'adapters':>8}  meaning")
        from peftdoctor.rules.registry import RULES

        lines += [f"  {c:<6} {s.value:<8} {n:>8}  {RULES[c].summary}" for c, s, n in counts]
    for report in worst[:20]:
        codes = ", ".join(sorted({f.code for f in problems(report)}))
        lines.append(f"  {_worst(report).value:<8} {report.path}: {codes}")
    if len(worst) > 20:
        lines.append(f"  ... and {len(worst) - 20} more adapters with findings (use --format json)")
    lines += [f"  unusable {path}: {reason}" for path, reason in scan_report.unusable]
    return "\n".join(lines) + "\n"


def _worst(report: Report) -> Severity:
    return max((f.severity for f in problems(report)), key=lambda s: s.rank, default=Severity.INFO)


def to_dict(scan_report: ScanReport) -> dict[str, Any]:
    from peftdoctor.render.report import to_dict as report_dict

    return {
        "format_version": FORMAT_VERSION,
        "root": scan_report.root,
        "adapters": len(scan_report.reports),
        "summary": _summary(scan_report),
        "reports": [report_dict(r) for r in scan_report.reports],
        "unusable": [{"path": p, "reason": why} for p, why in scan_report.unusable],
    }


def _summary(scan_report: ScanReport) -> list[dict[str, Any]]:
    return [{"code": c, "severity": s.value, "adapters": n} for c, s, n in scan_report.counts()]


def spool_line(report: Report) -> str:
    """One report as one line of JSON (ASCII: surrogates escaped), to spool while scanning."""
    from peftdoctor.render.report import to_dict as report_dict

    return json.dumps(report_dict(report), sort_keys=True) + "\n"


def write_json(scan_report: ScanReport, spooled: Iterable[str], write: Callable[[str], None]) -> None:
    """Write what `json.dumps(to_dict(scan_report), indent=2, sort_keys=True) + "\\n"` would, byte for
    byte, taking the reports from `spooled` (spool_line of each, in order) one at a time instead of
    holding them all in memory (10,000 adapters took 921 MB)."""
    head = {**to_dict(replace(scan_report, reports=())), "adapters": len(scan_report.reports),
            "summary": _summary(scan_report)}
    if not scan_report.reports:
        write(json.dumps(head, indent=2, sort_keys=True) + "\n")
        return
    before, after = json.dumps({**head, "reports": [None]}, indent=2, sort_keys=True).split("\n    null\n")
    write(before + "\n")
    for i, line in enumerate(spooled):
        indented = json.dumps(json.loads(line), indent=2, sort_keys=True).replace("\n", "\n    ")
        write(("" if i == 0 else ",\n") + "    " + indented)
    write("\n" + after + "\n")
