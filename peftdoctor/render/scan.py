"""Render what `scan` returns: a summary table worst first for people, every report for machines."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable

from peftdoctor.model.findings import FORMAT_VERSION, Report, Severity
from peftdoctor.ops.scan import ScanReport, natural_key, problems
from peftdoctor.render.report import to_dict as report_dict
from peftdoctor.render.sarif import artifact, sarif_log
from peftdoctor.render.terminal import lines as text_lines
from peftdoctor.rules.registry import RULES, rule

SHOWN = 20  # adapters listed by name in the text summary; --format json lists all


def _worst(report: Report) -> Severity:
    return max((f.severity for f in problems(report)), key=lambda s: s.rank, default=Severity.INFO)


def render_text(scan_report: ScanReport) -> str:
    reports = scan_report.reports
    worst = sorted(scan_report.with_problems(), key=lambda r: (-_worst(r).rank, natural_key(r.path)))
    lines = [f"{scan_report.root}: {len(reports)} adapter(s), {len(reports) - len(worst)} clean"]
    counts = scan_report.counts()
    if counts:
        lines.append(f"  {'code':<6} {'severity':<8} {'adapters':>8}  meaning")
        lines += [f"  {c:<6} {s.value:<8} {n:>8}  {RULES[c].summary}" for c, s, n in counts]
    for report in worst[:SHOWN]:
        codes = ", ".join(sorted({f.code for f in problems(report)}))
        lines.append(f"  {_worst(report).value:<8} {report.path}: {codes}")
    if len(worst) > SHOWN:
        lines.append(f"  ... and {len(worst) - SHOWN} more adapters with findings (use --format json)")
    lines += [f"  unusable {path}: {reason}" for path, reason in scan_report.unusable]
    return text_lines(lines)


def to_dict(scan_report: ScanReport) -> dict[str, Any]:
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


def render_json(scan_report: ScanReport) -> str:
    parts: list[str] = []
    write_json(scan_report, parts.append)
    return "".join(parts)


def write_json(scan_report: ScanReport, write: Callable[[str], object]) -> None:
    """Write what `json.dumps(to_dict(scan_report), indent=2, sort_keys=True) + "\\n"` would, byte for byte;
    with a spool (ops/scan.py), one report at a time from it instead of holding them all in memory
    (10,000 adapters took 921 MB)."""
    if scan_report.spool is None or not scan_report.reports:
        write(json.dumps(to_dict(scan_report), indent=2, sort_keys=True) + "\n")
        return
    head = {**to_dict(replace(scan_report, reports=())), "adapters": len(scan_report.reports),
            "summary": _summary(scan_report)}
    before, after = json.dumps({**head, "reports": [None]}, indent=2, sort_keys=True).split("\n    null\n")
    write(before + "\n")
    with open(scan_report.spool, encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            indented = json.dumps(json.loads(line), indent=2, sort_keys=True).replace("\n", "\n    ")
            write(("" if i == 0 else ",\n") + "    " + indented)
    write("\n" + after + "\n")


def render_sarif(scan_report: ScanReport) -> str:
    unusable = [(artifact(path, None), rule("PD008").finding(why, "run `peftdoctor check` on it for the details"))
                for path, why in scan_report.unusable]
    return sarif_log([(artifact(r.path, f.file), f) for r in scan_report.reports for f in r.findings] + unusable)
