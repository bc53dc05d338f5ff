"""Render what `check` returns (a Report, or Checks of several): text for people, JSON and SARIF for machines."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from peftdoctor.model.findings import FORMAT_VERSION, Compatibility, Report
from peftdoctor.model.results import Checks
from peftdoctor.render.sarif import artifact, sarif_log
from peftdoctor.render.terminal import lines as text_lines

if TYPE_CHECKING:
    from peftdoctor.ops.combine import Combination

def to_dict(report: Report) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "path": report.path,
        "kind": report.kind,
        "peft_installed": report.peft_installed,
        "peft_target": report.peft_target,
        "written_by": report.written_by,
        "findings": [f.to_dict() for f in report.findings],
        "compatibility": [{"peft": c.peft, "result": c.result, "dropped": list(c.dropped), "error": c.error,
                           "warning": c.warning, "lost": [{"key": k, "effect": e} for k, e in c.lost],
                           "verdict": c.judged, "part": c.part, "detail": c.detail}
                          for c in report.compatibility],
        "skipped": list(report.skipped),
    }


def render_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=True) + "\n"


def render_text(report: Report) -> str:
    lines = [f"{report.path}: {report.kind}, judged for peft {report.peft_target}"
             + (f", written by peft {report.written_by}" if report.written_by else "")]
    for f in report.findings:
        where = f" [{f.key or f.file}]" if (f.key or f.file) else ""
        lines.append(f"  {f.code} {f.severity.value}{where}: {f.message}")
        lines.append(f"        fix: {f.fix}")
    lines += [f"  skipped: {note}" for note in report.skipped]
    if report.compatibility:
        lines.append("  compatibility: " + _ranges(report.compatibility))
        lines += _verdicts(report.compatibility)
        lines += _losses(report.compatibility)
    if not report.findings:
        lines.append("  no findings")
    return text_lines(lines)


def _ranges(entries: tuple[Compatibility, ...]) -> str:
    """Runs of consecutive releases with the same verdict on the whole adapter, e.g. 'ok 0.14.0-0.21.2; fails
    0.6.0-0.13.2' (an "ok" only where nothing the check knows makes that release fail or compute otherwise)."""
    return "; ".join(f"{verdict} {span}" for verdict, span in _runs(entries, lambda e: e.judged))


def _runs(entries: tuple[Compatibility, ...], key: Any) -> list[tuple[Any, str]]:
    runs: list[list[Any]] = []
    for entry in entries:
        if runs and runs[-1][0] == key(entry):
            runs[-1][2] = entry.peft
        else:
            runs.append([key(entry), entry.peft, entry.peft])
    return [(k, a + (f"-{b}" if a != b else "")) for k, a, b in runs]


def _verdicts(entries: tuple[Compatibility, ...]) -> list[str]:
    """One line per run of releases the weights, the base or transformers decide: which part, and why."""
    decided = _runs(entries, lambda e: (e.judged, e.part, e.detail) if e.part not in (None, "config") else None)
    return [f"    {verdict} {span} ({part}): {detail}" for (verdict, part, detail), span in
            ((k, s) for k, s in decided if k is not None)]


def _losses(entries: tuple[Compatibility, ...]) -> list[str]:
    """One line per meaning-bearing key some releases drop, naming those releases and the effect."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        for key, effect in entry.lost:
            by_key.setdefault((key, effect), []).append(entry.peft)
    return [f"    {key} dropped by peft {versions[0]}" + (f"..{versions[-1]}" if len(versions) > 1 else "")
            + f": {effect}" for (key, effect), versions in by_key.items()]


def render_sarif(report: Report) -> str:
    return sarif_log((artifact(report.path, f.file), f) for f in report.findings)


def combination_to_dict(combination: "Combination") -> dict[str, Any]:
    return {"combination_type": combination.combination_type, "adapters": list(combination.adapters),
            "possible": combination.possible, "new_rank": combination.new_rank,
            "findings": [f.to_dict() for f in combination.findings]}


def render_combination(combination: "Combination") -> str:
    verdict = "possible" if combination.possible else "NOT possible"
    rank = f", new rank {combination.new_rank}" if combination.new_rank is not None else ""
    lines = [f"combine {len(combination.adapters)} adapters with {combination.combination_type}: {verdict}{rank}"]
    for f in combination.findings:
        lines += [f"  {f.code} {f.severity.value}: {f.message}", f"        fix: {f.fix}"]
    return text_lines(lines)


def checks_to_dict(checks: Checks) -> dict[str, Any]:
    body: dict[str, Any] = {"format_version": FORMAT_VERSION, "reports": [to_dict(r) for r in checks.reports]}
    if checks.combination:
        body["combination"] = combination_to_dict(checks.combination)
    return body


def render_checks_text(checks: Checks) -> str:
    text = "".join(render_text(r) for r in checks.reports)
    return text + (render_combination(checks.combination) if checks.combination else "")


def render_checks_json(checks: Checks) -> str:
    return json.dumps(checks_to_dict(checks), indent=2, sort_keys=True) + "\n"


def render_checks_sarif(checks: Checks) -> str:
    # A combination's findings concern the adapters together: they are listed without a location.
    located = [(artifact(r.path, f.file), f) for r in checks.reports for f in r.findings]
    combined = [(None, f) for f in checks.combination.findings] if checks.combination else []
    return sarif_log(located + combined)
