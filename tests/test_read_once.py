"""The adapter is read once: every command judges the one Adapter object (model/adapter.py).

`check --target vllm` and `fix --target vllm` used to open adapter_model.safetensors twice (the
weight rules and the engine rules each read the header). The count here comes from Python's audit
hook for "open", which every file open in the process raises (builtins.open and os.open alike).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "tiny-llama-lora"

COUNTER = """
import os, sys
opened = {}
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.path.basename(os.fsdecode(args[0]))
        opened[name] = opened.get(name, 0) + 1
sys.addaudithook(hook)
sys.argv = ["peftdoctor", *sys.argv[1:]]
from peftdoctor.cli import app
try:
    app()
except SystemExit:
    pass
sys.stderr.write("OPENED " + repr(opened) + "\\n")
"""


def _opens(*args: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", COUNTER, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    line = next(line for line in done.stderr.splitlines() if line.startswith("OPENED "))
    return eval(line[len("OPENED "):])  # a dict literal printed by the child above


@pytest.mark.parametrize("command", [
    ["check", "--target", "vllm"], ["fix", "--target", "vllm", "--dry-run"], ["check"],
    ["fix", "--dry-run"], ["check", "--target", "sglang", "--format", "json"],
])
def test_weights_and_config_are_opened_once(command: list[str], tmp_path: Path) -> None:
    opened = _opens(command[0], str(FIXTURE), *command[1:])
    assert opened.get("adapter_model.safetensors") == 1, opened
    assert opened.get("adapter_config.json") == 1, opened


def test_check_and_combine_read_each_adapter_once(tmp_path: Path) -> None:
    opened = _opens("check", str(FIXTURE), str(ROOT / "fixtures" / "broken-adapter"), "--combine", "linear")
    assert opened.get("adapter_model.safetensors") == 2 and opened.get("adapter_config.json") == 2, opened


def test_the_counter_sees_a_second_read() -> None:
    """The audit hook is what counts: a command that reads the file twice must show 2."""
    code = ("from peftdoctor.io.adapter import open_adapter; import sys; "
            f"open_adapter({str(FIXTURE)!r}); open_adapter({str(FIXTURE)!r})")
    counted = COUNTER.replace("from peftdoctor.cli import app", code + "\napp = lambda: None")
    done = subprocess.run([sys.executable, "-c", counted], capture_output=True, text=True, cwd=ROOT, timeout=60)
    line = next(line for line in done.stderr.splitlines() if line.startswith("OPENED "))
    assert eval(line[len("OPENED "):]).get("adapter_model.safetensors") == 2
