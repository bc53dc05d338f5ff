"""Render what `fix` returns (a Plan, Fixes of several, or with --out a FixedCopy): one line per key for
people, a stable JSON object and SARIF (refusals, rewrites, and the notes the plan leaves) for machines."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from peftdoctor.errors import clip
from peftdoctor.model.findings import FORMAT_VERSION, Finding, Severity
from peftdoctor.model.results import Fixes
from peftdoctor.ops.fix import Plan
from peftdoctor.render.sarif import sarif_log
from peftdoctor.render.terminal import line
from peftdoctor.render.terminal import lines as text_lines
from peftdoctor.rules.registry import rule

if TYPE_CHECKING:
    from peftdoctor.ops.fix_copy import FixedCopy


def _short(value: Any) -> str:
    return clip(json.dumps(value, sort_keys=True), 50)


def render_plan(plan: Plan) -> str:
    head = f"{plan.path}: fix for peft {plan.target}" + (f" (written by peft {plan.written_by})"
                                                          if plan.written_by else "")
    lines = [head]
    for c in plan.changes:
        if c.action == "drop":
            lines.append(f"  drop    {c.key}={_short(c.before)}: {c.reason}")
        else:
            before = f"{_short(c.before)} -> " if c.action == "set" else ""
            lines.append(f"  {c.action:<7} {c.key}={before}{_short(c.after)}: {c.reason}")
    lines += [f"  REFUSE  {r.key}: {r.reason}" for r in plan.refusals]
    if plan.refused:
        lines.append("  nothing written: no exact rewrite exists for the keys above (--force drops them anyway)")
    elif not plan.changed:
        lines.append("  nothing to change")
    if plan.remaining:
        lines.append(f"  still broken for peft {plan.target} after this fix (no config rewrite repairs it):")
        for f in plan.remaining:
            lines += [f"    {f.code} {f.message}", f"          fix: {f.fix}"]
    return text_lines(lines)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "path": plan.path,
        "target": plan.target,
        "written_by": plan.written_by,
        "changed": plan.changed,
        "refused": plan.refused,
        "changes": [{"key": c.key, "action": c.action, "before": c.before, "after": c.after, "reason": c.reason,
                     "forced": c.forced} for c in plan.changes],
        "refusals": [{"key": r.key, "reason": r.reason} for r in plan.refusals],
        "remaining": [f.to_dict() for f in plan.remaining],
        "result": plan.result,
    }


def render_plan_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, sort_keys=True) + "\n"


def plan_findings(plan: Plan) -> list[Finding]:
    """The plan as findings: each refusal (PD190), each rewrite (PD191), then the plan's own notes."""
    refused = [rule("PD190").finding(f"{r.key}: {r.reason}", "nothing was written; keep a peft that knows the key, "
                                     "or run fix --force to drop it (the meaning changes)", key=r.key)
               for r in plan.refusals]
    rewrites = [rule("PD191").finding(
        f"{c.key}: {c.action} for peft {plan.target} ({c.reason})"
        + ("; forced: what the adapter computes changes" if c.forced else ""),
        f"`peftdoctor fix --peft {plan.target}` makes this change" + (" once the refusals are resolved"
                                                                     if plan.refused else ""),
        key=c.key, severity=Severity.WARNING if c.forced else None) for c in plan.changes]
    return refused + rewrites + list(plan.notes) + list(plan.remaining)


def render_plan_sarif(plan: Plan) -> str:
    return sarif_log((plan.config_path, f) for f in plan_findings(plan))


def render_fixes_text(fixes: Fixes) -> str:
    return "".join(render_plan(p) for p in fixes.plans)


def render_fixes_json(fixes: Fixes) -> str:
    body = {"format_version": FORMAT_VERSION, "plans": [plan_to_dict(p) for p in fixes.plans]}
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def render_fixes_sarif(fixes: Fixes) -> str:
    return sarif_log((p.config_path, f) for p in fixes.plans for f in plan_findings(p))


def written(plan: Plan, backup: Optional[str]) -> str:
    """The line said on stderr after a write."""
    return line(f"wrote {plan.config_path}" + (f" (original kept as {backup})" if backup else ""))


def render_copy(copy: "FixedCopy") -> str:
    """The plan, then where the copy is (or why nothing was written), what it holds, and what was left out."""
    rows = []
    if copy.written:
        how = f"{len(copy.linked)} hard-linked, {len(copy.files) - len(copy.linked)} copied" if copy.linked \
            else f"{len(copy.files)} copied"
        rows.append(f"  wrote {copy.out}: {len(copy.files)} files ({how}); the original is unchanged")
        if copy.linked:
            rows.append(f"  hard-linked (share their data with the original): {', '.join(copy.linked)}")
    elif copy.after is not None:
        rows.append("  nothing written: the fixed copy still has errors")
        for f in copy.after.findings:
            if f.severity is Severity.ERROR:
                rows += [f"    {f.code} {f.message}", f"          fix: {f.fix}"]
    else:
        rows.append("  nothing written at --out")
    rows += [f"  left out {name}: {why}" for name, why in copy.left_out]
    if copy.after is not None and copy.written:
        worst = copy.after.worst()
        rows.append(f"  check of the copy: {len(copy.after.findings)} findings"
                    + (f", worst {worst.value}" if worst else ""))
    return render_plan(copy.plan) + text_lines(rows)


def copy_to_dict(copy: "FixedCopy") -> dict[str, Any]:
    """{"plan": fix's plan object, "out": the copy's directory or null, "written", "files", "linked",
    "left_out": [{"name", "why"}], "after": the check of the copy (check's JSON object) or null}."""
    from peftdoctor.render.report import to_dict

    return {
        "format_version": FORMAT_VERSION,
        "plan": plan_to_dict(copy.plan),
        "out": str(copy.out) if copy.out is not None else None,
        "written": copy.written,
        "files": list(copy.files),
        "linked": list(copy.linked),
        "left_out": [{"name": name, "why": why} for name, why in copy.left_out],
        "after": to_dict(copy.after) if copy.after is not None else None,
    }


def render_copy_json(copy: "FixedCopy") -> str:
    return json.dumps(copy_to_dict(copy), indent=2, sort_keys=True) + "\n"


def render_copy_sarif(copy: "FixedCopy") -> str:
    found = [(copy.plan.config_path, f) for f in plan_findings(copy.plan)]
    if copy.after is not None:
        found += [(copy.after.path, f) for f in copy.after.findings]
    return sarif_log(found)
