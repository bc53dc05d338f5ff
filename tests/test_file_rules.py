"""Every command applies the same file rules (peftdoctor/io/files.py) to what it reads.

Regression tests for the hardening issue's first item: `merge` copied files that symlinks in the
adapter pointed at outside it (a 0600 secret ended up byte for byte in a model directory users
upload), and a fifo or device in place of a config or weights file hung check, fix, scan and verify
(or was read until MemoryError). Each test reproduces the exact layout and runs the real CLI in a
subprocess with a timeout, so a hang fails the test instead of hanging the suite.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import adapters as A

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds; every case here finishes in about one


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=TIMEOUT, input=stdin)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("file-rules")
    base = A.make_llama_base(root / "base")
    adapter = A.make_lora_adapter(root / "adapter", base, base_model_name_or_path=str(base))
    secret = root / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP-SECRET-CONTENT\n")
    os.chmod(secret, 0o600)
    return {"base": base, "adapter": adapter, "secret": secret}


def _copy(source: Path, directory: Path) -> Path:
    shutil.copytree(source, directory, symlinks=True)
    return directory


def _nothing_leaked(out: Path, secret: Path) -> None:
    assert not out.exists(), "a refused merge leaves nothing at --out"
    needle = secret.read_bytes()
    for path in out.parent.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != secret:
            assert needle not in path.read_bytes(), f"{path} holds the secret"


@pytest.mark.parametrize("name", ["tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"])
def test_merge_refuses_adapter_link_pointing_outside(made: dict[str, Path], tmp_path: Path, name: str) -> None:
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / name).symlink_to(made["secret"])
    out = tmp_path / "merged"
    done = cli("merge", str(adapter), "--base", str(made["base"]), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert name in done.stderr and "outside" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    _nothing_leaked(out, made["secret"])


def test_merge_refuses_base_link_pointing_outside(made: dict[str, Path], tmp_path: Path) -> None:
    base = _copy(made["base"], tmp_path / "base")
    (base / "tokenizer.json").unlink()
    (base / "tokenizer.json").symlink_to(made["secret"])
    out = tmp_path / "merged"
    done = cli("merge", str(made["adapter"]), "--base", str(base), "--out", str(out))
    assert done.returncode == 2 and "tokenizer.json" in done.stderr, done.stderr
    _nothing_leaked(out, made["secret"])


def test_merge_refuses_index_naming_a_shard_outside(made: dict[str, Path], tmp_path: Path) -> None:
    base = _copy(made["base"], tmp_path / "base")
    (base / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "../elsewhere.safetensors"}}
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    done = cli("merge", str(made["adapter"]), "--base", str(base), "--out", str(tmp_path / "merged"))
    assert done.returncode == 2 and "outside the model directory" in done.stderr, done.stderr


def test_merge_allows_links_inside_the_adapter(made: dict[str, Path], tmp_path: Path) -> None:
    """The rule is about where a link points, not links as such: an in-directory link is fine."""
    pytest.importorskip("torch")
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / "weights-real.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.safetensors").symlink_to("weights-real.safetensors")
    done = cli("merge", str(adapter), "--base", str(made["base"]), "--out", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr


def _fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_fifo_inside_adapter_never_blocks(made: dict[str, Path], tmp_path: Path, name: str) -> None:
    adapter = _copy(made["adapter"], tmp_path / "tree" / "adapter")
    _fifo(adapter / name)
    checked = cli("check", str(adapter), "--format", "json")
    assert checked.returncode == 1, checked.stderr
    findings = json.loads(checked.stdout)["findings"]
    assert {"code": "PD007", "file": name} in [{"code": f["code"], "file": f["file"]} for f in findings]
    assert "fifo" in next(f["message"] for f in findings if f["code"] == "PD007")
    fixed = cli("fix", str(adapter))
    assert fixed.returncode == 2 if name == "adapter_config.json" else fixed.returncode in (0, 1), fixed.stderr
    scanned = cli("scan", str(tmp_path / "tree"))
    assert scanned.returncode == 1, scanned.stdout + scanned.stderr
    merged = cli("merge", str(adapter), "--base", str(made["base"]), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 2 and "fifo" in merged.stderr, merged.stderr


def test_link_to_fifo_outside_never_blocks_verify(made: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.safetensors").symlink_to(_fifo(tmp_path / "pipe"))
    done = cli("verify", str(adapter), "--base", str(made["base"]), "--device", "cpu")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "adapter_model.safetensors" in done.stderr and "outside" in done.stderr


def test_verify_refuses_adapter_tokenizer_link_outside(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / "tokenizer.json").symlink_to(made["secret"])
    out = tmp_path / "merged"
    done = cli("verify", str(adapter), "--base", str(made["base"]), "--device", "cpu", "--out", str(out))
    assert done.returncode == 2 and "tokenizer.json" in done.stderr, done.stdout + done.stderr
    _nothing_leaked(out, made["secret"])


def test_link_to_device_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / "adapter_config.json").unlink()
    (adapter / "adapter_config.json").symlink_to("/dev/zero")
    done = cli("check", str(adapter), "--format", "json")
    assert done.returncode == 1
    assert "PD006" in [f["code"] for f in json.loads(done.stdout)["findings"]]


def test_device_node_inside_adapter_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = _copy(made["adapter"], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    try:
        os.mknod(adapter / "adapter_model.safetensors", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    done = cli("check", str(adapter), "--format", "json")
    assert done.returncode == 1
    found = [f for f in json.loads(done.stdout)["findings"] if f["code"] == "PD007"]
    assert found and "character device" in found[0]["message"]


def test_explain_refuses_a_device_and_reads_pipes() -> None:
    done = cli("explain", "/dev/zero")
    assert done.returncode == 2 and "character device" in done.stderr
    piped = cli("explain", "-", stdin="ValueError: Target modules {'q'} not found in the base model.\n")
    assert piped.returncode == 0 and "PD350" in piped.stdout


def test_explain_keeps_the_end_of_an_oversized_log(tmp_path: Path) -> None:
    from peftdoctor.cli.app import EXPLAIN_MAX_BYTES

    log = tmp_path / "huge.log"
    with open(log, "w") as fh:
        line = "step 1 loss 0.1 " * 8 + "\n"
        fh.write(line * (EXPLAIN_MAX_BYTES // len(line) + 10))
        fh.write("ValueError: Target modules {'q'} not found in the base model.\n")
    done = cli("explain", str(log))
    assert done.returncode == 0 and "PD350" in done.stdout, done.stderr
