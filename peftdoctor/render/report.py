"""Render a finished Report: text for people, JSON and SARIF for machines (byte-stable)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from peftdoctor import __version__
from peftdoctor.model.findings import FORMAT_VERSION, Compatibility, Report
from peftdoctor.rules.registry import RULES

if TYPE_CHECKING:
    from peftdoctor.ops.combine import Combination

_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


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
                           "warning": c.warning, "lost": [{"key": k, "effect": e} for k, e in c.lost]}
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
        lines += _losses(report.compatibility)
    if not report.findings:
        lines.append("  no findings")
    return "\n".join(lines) + "\n"


def _ranges(entries: tuple[Compatibility, ...]) -> str:
    """Runs of consecutive releases with the same result, e.g. 'ok 0.14.0-0.21.2; fails 0.6.0-0.13.2'."""
    runs: list[list[Any]] = []
    for entry in entries:
        if runs and runs[-1][0] == entry.result:
            runs[-1][2] = entry.peft
        else:
            runs.append([entry.result, entry.peft, entry.peft])
    return "; ".join(f"{r} {a}" + (f"-{b}" if a != b else "") for r, a, b in runs)


def _losses(entries: tuple[Compatibility, ...]) -> list[str]:
    """One line per meaning-bearing key some releases drop, naming those releases and the effect."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        for key, effect in entry.lost:
            by_key.setdefault((key, effect), []).append(entry.peft)
    return [f"    {key} dropped by peft {versions[0]}" + (f"..{versions[-1]}" if len(versions) > 1 else "")
            + f": {effect}" for (key, effect), versions in by_key.items()]


def render_sarif(report: Report) -> str:
    used = sorted({f.code for f in report.findings})
    rules = [{"id": c, "name": RULES[c].name, "shortDescription": {"text": RULES[c].summary},
              "defaultConfiguration": {"level": _SARIF_LEVEL[RULES[c].severity.value]}} for c in used]
    results = []
    for f in report.findings:
        artifact = f.file or "adapter_config.json"
        location = f"{report.path.rstrip('/')}/{artifact}" if not report.path.endswith(".json") else report.path
        result: dict[str, Any] = {
            "ruleId": f.code, "ruleIndex": used.index(f.code), "level": _SARIF_LEVEL[f.severity.value],
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": location}}}],
        }
        if f.key:
            result["properties"] = {"key": f.key}
        results.append(result)
    sarif = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "peftdoctor", "version": __version__, "rules": rules}},
        "results": results}]}
    return json.dumps(sarif, indent=2, sort_keys=True) + "\n"


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
    return "\n".join(lines) + "\n"


REPORTER_BY_NAME: dict[str, Callable[[Report], str]] = {
    "text": render_text, "json": render_json, "sarif": render_sarif,
}
