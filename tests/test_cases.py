"""Data-driven cases: tests/cases/<name>/adapter_config.json beside expected.txt.

expected.txt lines (all must hold):
  # args: ...                          extra CLI arguments
  exit N                               the exit code
  PDnnn [key]                          a finding with that code (and key) is reported
  !PDnnn [key]                         no such finding
  message PDnnn text                   a finding with that code has `text` in its message
  compat VERSION RESULT [text|keys]    that release's predicted result, then its error text or dropped keys
  lost VERSION key / nolost VERSION    a meaning-bearing drop is named / none is
  written_by TEXT                      the release that wrote the config
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftdoctor.cli.app import app

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


def run(case: Path) -> tuple[int, dict]:
    lines = (case / "expected.txt").read_text().splitlines()
    args = next((shlex.split(l.split(":", 1)[1]) for l in lines if l.startswith("# args:")), [])
    result = CliRunner().invoke(app, ["check", str(case), "--format", "json", *args])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    code, report = run(case)
    findings = report["findings"]
    compat = {c["peft"]: c for c in report["compatibility"]}
    for line in (case / "expected.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, *rest = line.split()
        if word == "exit":
            assert code == int(rest[0]), (line, findings)
        elif word.lstrip("!").startswith("PD"):
            hit = [f for f in findings if f["code"] == word.lstrip("!") and (not rest or f["key"] == rest[0])]
            assert bool(hit) != word.startswith("!"), (line, findings)
        elif word == "message":
            assert any(f["code"] == rest[0] and " ".join(rest[1:]) in f["message"] for f in findings), (line, findings)
        elif word == "compat":
            entry = compat[rest[0]]
            assert entry["result"] == rest[1], (line, entry)
            detail = line.split(None, 3)[3] if len(rest) > 2 else None
            if detail and entry["result"] == "fails":
                assert entry["error"] == detail, (line, entry)
            elif detail:
                assert sorted(entry["dropped"]) == sorted(detail.split()), (line, entry)
        elif word in ("lost", "nolost"):
            lost = [l["key"] for l in compat[rest[0]]["lost"]]
            assert (rest[1] in lost) if word == "lost" else not lost, (line, lost)
        elif word == "written_by":
            assert report["written_by"] == rest[0], (line, report["written_by"])
        else:
            raise AssertionError(f"unknown expectation {line!r} in {case.name}")
