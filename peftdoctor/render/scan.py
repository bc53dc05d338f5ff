"""Render what `scan` returns: a summary table worst first for people, every report for machines."""
from __future__ import annotations

import json
from typing import Any

from peftdoctor.model.findings import FORMAT_VERSION, Severity
from peftdoctor.ops.scan import ScanReport
from peftdoctor.render.report import to_dict as report_dict
from peftdoctor.render.sarif import artifact, sarif_log
from peftdoctor.rules.registry import RULES, rule

SHOWN = 20  # adapters listed by name in the text summary; --format json lists all


def render_text(scan_report: ScanReport) -> str:
    reports = scan_report.reports
    clean = sum(1 for r in reports if not r.findings)
    lines = [f"{scan_report.root}: {len(reports)} adapter(s), {clean} clean"]
    counts = scan_report.counts()
    if counts:
        lines.append(f"  {'code':<6} {'severity':<8} {'adapters':>8}  meaning")
        lines += [f"  {c:<6} {s.value:<8} {n:>8}  {RULES[c].summary}" for c, s, n in counts]
    worst = sorted((r for r in reports if r.findings), key=lambda r: (-(r.worst() or Severity.INFO).rank, r.path))
    for report in worst[:SHOWN]:
        codes = ", ".join(sorted({f.code for f in report.findings}))
        lines.append(f"  {(report.worst() or Severity.INFO).value:<8} {report.path}: {codes}")
    if len(worst) > SHOWN:
        lines.append(f"  ... and {len(worst) - SHOWN} more adapters with findings (use --format json)")
    lines += [f"  unusable {path}: {reason}" for path, reason in scan_report.unusable]
    return "\n".join(lines) + "\n"


def to_dict(scan_report: ScanReport) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "root": scan_report.root,
        "adapters": len(scan_report.reports),
        "summary": [{"code": c, "severity": s.value, "adapters": n} for c, s, n in scan_report.counts()],
        "reports": [report_dict(r) for r in scan_report.reports],
        "unusable": [{"path": p, "reason": why} for p, why in scan_report.unusable],
    }


def render_json(scan_report: ScanReport) -> str:
    return json.dumps(to_dict(scan_report), indent=2, sort_keys=True) + "\n"


def render_sarif(scan_report: ScanReport) -> str:
    unusable = [(artifact(path, None), rule("PD008").finding(why, "run `peftdoctor check` on it for the details"))
                for path, why in scan_report.unusable]
    return sarif_log([(artifact(r.path, f.file), f) for r in scan_report.reports for f in r.findings] + unusable)
