"""Render the registry of finding codes for `peftdoctor rules` (docs/findings.md's table: registry.markdown_table)."""
from __future__ import annotations

import json

from peftdoctor.model.findings import FORMAT_VERSION
from peftdoctor.render.terminal import lines
from peftdoctor.rules.registry import RULES


def render_text() -> str:
    return lines(f"{r.code}  {r.severity.value:<7}  {r.name:<26}  {r.summary}" for r in RULES.values())


def render_json() -> str:
    # An object like every other JSON output, so that a reader can check format_version first.
    body = {"format_version": FORMAT_VERSION,
            "rules": [{"code": r.code, "name": r.name, "severity": r.severity.value, "summary": r.summary}
                      for r in RULES.values()]}
    return json.dumps(body, indent=2, sort_keys=True) + "\n"
