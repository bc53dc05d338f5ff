"""The light install, for real: a fresh virtual environment with only peftdoctor's own dependencies
(what `pip install peftdoctor` and a pre-commit hook get: no torch, transformers or peft) running this
checkout from PYTHONPATH, as `python -m peftdoctor` from a clone does."""
from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
# pyproject.toml's [project] dependencies, and nothing else.
LIGHT = ["packaging>=21", "jsonschema>=4.18", "typer>=0.12,<0.29", "huggingface_hub>=0.20", "safetensors>=0.4"]


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("light-venv")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *LIGHT],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"cannot install the light dependencies from PyPI: {pip.stderr.strip().splitlines()[-1:]}")
    have = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('torch', "
                           "'transformers', 'peft', 'numpy') if u.find_spec(m)])"], capture_output=True, text=True)
    assert have.stdout.strip() == "[]", have.stdout  # the environment really is the light one
    return python


def peftdoctor(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(python), "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(env, PYTHONPATH=str(ROOT)), timeout=300)


def test_check_runs_from_a_checkout(light_python: Path, tmp_path: Path) -> None:
    done = peftdoctor(light_python, "check", str(CLEAN), "--peft", "0.21.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "peft-adapter, judged for peft 0.21.2" in done.stdout and "no findings" in done.stdout
    failing = peftdoctor(light_python, "check", str(CLEAN), "--peft", "0.13.2", "--format", "json", cwd=tmp_path)
    assert failing.returncode == 1 and '"PD105"' in failing.stdout, failing.stderr


@pytest.mark.parametrize("command", [["verify", str(CLEAN)], ["merge", str(CLEAN), "--out", "OUT"]])
def test_verify_and_merge_name_the_extra(light_python: Path, tmp_path: Path, command: list[str]) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    done = peftdoctor(light_python, *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert 'pip install "peftdoctor[verify]"' in done.stderr and "torch" in done.stderr
    assert not (tmp_path / "out").exists()


def test_fix_out_and_prepare_run_light(light_python: Path, tmp_path: Path) -> None:
    """fix --out and serving.prepare (what the engine plugins call) need none of the heavy packages."""
    done = peftdoctor(light_python, "fix", str(CLEAN), "--out", str(tmp_path / "out"), "--peft", "0.21.2",
                      "--target", "vllm==0.6.5", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "out" / "adapter_model.safetensors").is_file(), done.stderr
    code = ("import sys; from peftdoctor.serving.prepare import prepare\n"
            f"print(prepare({str(CLEAN)!r}, 'vllm==0.6.5', cache_dir={str(tmp_path / 'cache')!r}).line)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    ran = subprocess.run([str(light_python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(env, PYTHONPATH=str(ROOT)), timeout=300)
    assert ran.returncode == 0 and "serving" in ran.stdout and "as is" in ran.stdout, ran.stderr
