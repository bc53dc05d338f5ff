"""fix --out DIR: a serving-ready copy (config rewritten exactly as `fix` would, the other top-level files
copied or hard-linked, the copy checked), the original untouched, DIR complete or absent."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import peftdoctor
from peftdoctor.cli.app import run
from peftdoctor.ops import fix_copy as fix_copy_module
from tests.adapters import edited_copy
from tests.test_hub_cache import REPO_ID, base_env, hub  # noqa: F401 - hub is a fixture

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
PEFT = "0.21.2"
RSLORA_FOR_VLLM = ("--target", "vllm==0.6.5", "--peft", PEFT)


def adapter(tmp_path: Path, name: str = "adapter", **changes: object) -> Path:
    """The fixture with `changes`, a tokenizer file, a symlink to it, and a checkpoint subdirectory."""
    made = edited_copy(CLEAN, tmp_path / name, changes, indent=2, sort_keys=True, newline=True)
    (made / "tokenizer.json").write_text('{"model": {"vocab": {}}}\n')
    os.symlink("tokenizer.json", made / "tokenizer_link.json")
    (made / "checkpoint-10").mkdir()
    (made / "checkpoint-10" / "optimizer.pt").write_bytes(b"not read")
    return made


def tree(path: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file below `path`: (bytes, mtime_ns, mode), links followed."""
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(path.rglob("*")) if p.is_file()}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["fix", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_copy_is_the_fix_and_the_original_is_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = adapter(tmp_path, use_rslora=True)
    before, names = tree(source), sorted(os.listdir(source))
    out = tmp_path / "served"
    code, stdout, stderr = cli(capsys, str(source), "--out", str(out), *RSLORA_FOR_VLLM)
    assert code == 0, stdout + stderr
    assert tree(source) == before and sorted(os.listdir(source)) == names  # no backup, no temporary file

    # The config is byte for byte what `fix` writes in place; every other top-level file is the same content.
    in_place = adapter(tmp_path, "in-place", use_rslora=True)
    assert run(["fix", str(in_place), *RSLORA_FOR_VLLM]) == 0
    capsys.readouterr()
    assert (out / "adapter_config.json").read_bytes() == (in_place / "adapter_config.json").read_bytes()
    assert "use_rslora" not in json.loads((out / "adapter_config.json").read_text())
    for name in ("adapter_model.safetensors", "tokenizer.json", "tokenizer_link.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert not (out / "tokenizer_link.json").is_symlink()  # a symlinked file is copied as content
    assert not (out / "checkpoint-10").exists()
    assert f"wrote {out}: 4 files (4 copied); the original is unchanged" in stdout
    assert "left out checkpoint-10: is a subdirectory" in stdout
    assert "drop    use_rslora" in stdout


def test_link_shares_the_unchanged_files_and_never_their_modes(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = adapter(tmp_path, use_rslora=True)
    weights = source / "adapter_model.safetensors"
    os.chmod(weights, 0o600)
    before = tree(source)
    out = tmp_path / "served"
    code, stdout, _ = cli(capsys, str(source), "--out", str(out), "--link", *RSLORA_FOR_VLLM)
    assert code == 0
    assert os.stat(out / "adapter_model.safetensors").st_ino == os.stat(weights).st_ino
    assert os.stat(out / "adapter_config.json").st_ino != os.stat(source / "adapter_config.json").st_ino
    assert tree(source) == before  # the staging's chmod pass did not touch the linked file's mode
    assert "hard-linked (share their data with the original): " in stdout


def test_link_falls_back_to_a_copy_across_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fix_copy_module.os, "link", no_link)
    made = peftdoctor.fix_copy(str(adapter(tmp_path, use_rslora=True)), tmp_path / "out", PEFT,
                               serve="vllm==0.6.5", link=True)
    assert made.written and made.linked == () and "adapter_model.safetensors" in made.files
    assert os.stat(made.out / "adapter_model.safetensors").st_nlink == 1


def test_a_refused_plan_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = adapter(tmp_path, use_dora=True)
    out = tmp_path / "served"
    code, stdout, _ = cli(capsys, str(source), "--out", str(out), *RSLORA_FOR_VLLM)
    assert code == 1 and not out.exists()
    assert "REFUSE  use_dora: vLLM 0.6.5 refuses to load it" in stdout
    out.mkdir()  # an empty directory stays as it was
    assert cli(capsys, str(source), "--out", str(out), *RSLORA_FOR_VLLM)[0] == 1
    assert os.listdir(out) == []


def test_a_copy_that_still_has_errors_is_not_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = adapter(tmp_path)  # rank 4: above a server started with --max-lora-rank 1
    out = tmp_path / "served"
    code, stdout, _ = cli(capsys, str(source), "--out", str(out), "--target", "vllm==0.11.1", "--max-lora-rank", "1",
                          "--peft", PEFT)
    assert code == 1 and not out.exists()
    assert "nothing written: the fixed copy still has errors" in stdout
    assert "rank 4 exceeds the server's --max-lora-rank 1: start the server with --max-lora-rank 8" in stdout
    code, _, _ = cli(capsys, str(source), "--out", str(out), "--target", "vllm==0.11.1", "--max-lora-rank", "8",
                     "--peft", PEFT)
    assert code == 0 and (out / "adapter_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "served"
    code, stdout, _ = cli(capsys, str(adapter(tmp_path, use_rslora=True)), "--out", str(out), "--format", "json",
                          *RSLORA_FOR_VLLM)
    data = json.loads(stdout)
    assert code == 0
    assert sorted(data) == ["after", "files", "format_version", "left_out", "linked", "out", "plan", "written"]
    assert data["out"] == str(out) and data["written"] is True and data["linked"] == []
    assert data["plan"]["changed"] is True and data["after"]["path"] == str(out)
    assert data["left_out"] == [{"name": "checkpoint-10", "why": "is a subdirectory (a checkpoint?); only the "
                                 "top-level files are the adapter"}]


@pytest.mark.parametrize("extra", [
    ["--dry-run"], ["--diff"], ["--check"], ["--backup-suffix", ".bak"], ["SECOND"],
])
def test_out_refuses_what_it_cannot_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    source = adapter(tmp_path)
    extra = [str(source) if e == "SECOND" else e for e in extra]
    code, stdout, stderr = cli(capsys, str(source), "--out", str(tmp_path / "out"), *extra, "--peft", PEFT)
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1 and stderr.startswith("peftdoctor: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["--link"],  # without --out
    ["--max-lora-rank", "16"],  # without --target
    ["--max-lora-rank", "24", "--target", "vllm==0.6.5"],  # vLLM 0.6.5 does not start with it
    ["--out", "FILE"], ["--out", "FULL"], ["--out", "MISSING/out"],
])
def test_unusable_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    source = adapter(tmp_path)
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "keep").write_text("mine")
    args = [str(tmp_path / a) if a in ("FILE", "FULL", "MISSING/out") else a for a in args]
    before = tree(tmp_path)
    code, _, stderr = cli(capsys, str(source), *args, "--peft", PEFT)
    assert code == 2 and len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert tree(tmp_path) == before


_KILLED = """\
import os, signal, sys
from peftdoctor.ops import fix_copy
real = fix_copy.copy_inside
def copy_then_die(src, dst):
    real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
fix_copy.copy_inside = copy_then_die
from peftdoctor.cli.app import run
run(sys.argv[1:])
"""


def test_killed_midway_leaves_no_half_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = adapter(tmp_path, use_rslora=True)
    out = tmp_path / "served"
    done = subprocess.run([sys.executable, "-c", _KILLED, "fix", str(source), "--out", str(out), *RSLORA_FOR_VLLM],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".served.partial-")]
    assert len(leftovers) == 1  # the dead run's staging directory, never at --out
    code, _, stderr = cli(capsys, str(source), "--out", str(out), *RSLORA_FOR_VLLM)
    assert code == 0 and "the staging directory of an interrupted run" in stderr
    assert not leftovers[0].exists() and (out / "adapter_model.safetensors").is_file()


def test_hub_cache_repo_id_copies_files_not_cache_links(hub: object, tmp_path: Path) -> None:  # noqa: F811
    env = base_env(hub, HF_HUB_OFFLINE="1")
    out = tmp_path / "served"
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "fix", REPO_ID, "--out", str(out), "--peft", PEFT,
                           "--target", "vllm==0.6.5"], capture_output=True, text=True, cwd=hub.work, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert not (out / name).is_symlink() and (out / name).is_file()
        assert (out / name).read_bytes() == (hub.snapshot / name).read_bytes()
    assert (hub.snapshot / "adapter_config.json").is_symlink()  # the cache itself is as huggingface_hub left it
