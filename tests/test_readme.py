"""The README is the front page: its fresh-machine commands are the ones CI runs, and every command of its
usage block runs as shown, on the bundled example adapters (the base is a tiny Llama built here)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import adapters

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO = ("python3 -m venv .venv-demo && .venv-demo/bin/pip install -q . && "
        ".venv-demo/bin/peftdoctor check fixtures/broken-adapter --peft 0.13.2")
# Each usage line's command -> the exit code and a line of output that prove it did what its comment says.
EXPECTED = {
    "check": (1, "PD206 error [r]"),
    "fix": (1, "still broken for peft 0.13.2 after this fix"),
    "verify": (0, "verdict: verified"),
    "merge": (0, "4 tensors merged"),
    "scan": (1, "fixtures: 2 adapter(s), 0 clean"),
    "explain": (0, "PD105 error"),
    "rules": (0, "PD001  error    empty-directory"),
}


def usage_lines() -> list[str]:
    block = README.read_text(encoding="utf-8").split("<!-- usage:start -->", 1)[1].split("<!-- usage:end -->", 1)[0]
    return [line for line in block.splitlines() if "peftdoctor " in line]


def command_of(line: str) -> str:
    return re.search(r"peftdoctor (\w+)", line).group(1)


def test_readme_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nbash scripts/test.sh\n" in text and "scripts/test.sh" in ci
    assert f"\n{DEMO}\n" in text, "the fresh-machine demo command changed"


def test_usage_shows_each_command_once() -> None:
    assert sorted(command_of(line) for line in usage_lines()) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base the fixtures were trained on (fixtures/build_fixtures.py: make_llama_base, seed 0)."""
    return adapters.make_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.mark.parametrize("line", usage_lines(), ids=command_of)
def test_usage_line_runs_as_shown(line: str, tiny_llama: Path, tmp_path: Path) -> None:
    code, shown = EXPECTED[command_of(line)]
    shell = line.split("  #", 1)[0].replace("./tiny-llama", str(tiny_llama)).replace("./merged", str(tmp_path / "m"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == code and shown in done.stdout, (shell, done.returncode, done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
