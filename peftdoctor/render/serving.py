"""The one log line a serving plugin writes per adapter it prepares (serving/prepare.py): what the engine
loads and why, or why it refuses. One line, terminal-safe (render/terminal.py): it lands in a server log."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from peftdoctor.errors import clip
from peftdoctor.model.findings import Finding
from peftdoctor.ops.fix import Change
from peftdoctor.render.terminal import line


def _change(change: Change) -> str:
    if change.action == "drop":
        return f"dropped {change.key}"
    before = f"{clip(json.dumps(change.before), 30)} -> " if change.action == "set" else ""
    return f"{change.key} {before}{clip(json.dumps(change.after), 30)}"


def serving_copy(name: str, path: Path, changes: tuple[Change, ...], engine: str) -> str:
    return line(f"peftdoctor: {name}: serving fixed copy {path} for {engine} "
                f"({'; '.join(_change(c) for c in changes)})")


def serving_as_is(name: str, path: Path, engine: str, warnings: int) -> str:
    said = f"; {warnings} warning{'s' if warnings != 1 else ''}, see `peftdoctor check`" if warnings else ""
    return line(f"peftdoctor: {name}: serving {path} as is (nothing to fix for {engine}{said})")


def refused(name: str, finding: Optional[Finding], reason: Optional[str] = None) -> str:
    if finding is None:
        return line(f"peftdoctor: {name} refused: {reason}")
    return line(f"peftdoctor: {name} refused: {finding.code} {finding.message} — fix: {finding.fix}")
