"""Render a fix Plan: one line per key for people, a stable JSON object for machines."""
from __future__ import annotations

import json
from typing import Any

from peftdoctor.model.findings import FORMAT_VERSION
from peftdoctor.ops.fix import Plan


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 50 else text[:47] + "..."


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
    return "\n".join(lines) + "\n"


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
        "result": plan.result,
    }
