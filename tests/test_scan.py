"""scan: every adapter under a tree is found and checked; the summary counts findings worst first."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from peftdoctor.ops.scan import scan

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def tree(tmp_path: Path) -> Path:
    for i in range(3):
        shutil.copytree(FIXTURES / "tiny-llama-lora", tmp_path / "run" / f"checkpoint-{i}")
    shutil.copytree(FIXTURES / "broken-adapter", tmp_path / "other" / "broken")
    shutil.copytree(FIXTURES / "tiny-llama-lora", tmp_path / ".git" / "ignored")
    (tmp_path / "run" / "notes.txt").write_text("not an adapter")
    return tmp_path


def test_scan_finds_and_counts(tmp_path: Path) -> None:
    result = scan(str(tree(tmp_path)), peft="0.21.2")
    assert sorted(Path(r.path).name for r in result.reports) == ["broken", "checkpoint-0", "checkpoint-1",
                                                                 "checkpoint-2"]
    counts = result.counts()
    assert counts[0][1].value == "error" and ("PD206", counts[0][1], 1) in counts
    severities = [s.rank for _, s, _ in counts]
    assert severities == sorted(severities, reverse=True)


def test_scan_cli_json(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "scan", str(tree(tmp_path)), "--format", "json",
                           "--peft", "0.13.2"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["adapters"] == 4
    assert {"code": "PD105", "severity": "error", "adapters": 4} in report["summary"]


def test_scan_of_a_clean_tree_exits_0(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "tiny-llama-lora", tmp_path / "a")
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "scan", str(tmp_path), "--peft", "0.21.2"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "1 adapter(s), 1 clean" in done.stdout


def test_scan_of_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "scan", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
