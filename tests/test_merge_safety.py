"""merge and verify against hostile or unlucky surroundings (issue 20, the second outside test pass):
a base that ships its own code, links planted while a merge runs, the --out destinations both commands
accept, a write that fails, and Ctrl-C while torch loads."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.merge import stream_merge  # noqa: E402
from peftdoctor.verification import large, render_text, verify  # noqa: E402
from tests import adapters as A  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    llama = A.make_llama_base(root / "llama")
    return {"root": root, "llama": llama, "adapter": A.make_lora_adapter(root / "adapter", llama)}


def _remote_code_base(llama: Path, directory: Path) -> Path:
    """The llama base under a model type transformers does not know, with its own code (auto_map) that
    leaves a marker file wherever it runs."""
    remote = Path(shutil.copytree(llama, directory))
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="pdremote", auto_map={"AutoConfig": "configuration_pd.PdConfig",
                                                   "AutoModelForCausalLM": "modeling_pd.PdModel"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "configuration_pd.py").write_text(
        "import os\nopen(os.environ['PD_MARKER'], 'w').write('ran')\nfrom transformers import LlamaConfig\n\n\n"
        "class PdConfig(LlamaConfig):\n    model_type = 'pdremote'\n")
    (remote / "modeling_pd.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_pd import PdConfig\n\n\n"
        "class PdModel(LlamaForCausalLM):\n    config_class = PdConfig\n")
    return remote


def test_remote_code_never_runs_nor_asks_without_the_flag(made: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Left unset, transformers asks "Do you wish to run the custom code? [y/N]" on stdin for a model type it
    does not know: `echo y |` ran the base's code, an open stdin stalled 15 s. Now merge, verify --merged and
    verify layer by layer tell it no: stdin is never read, the code never runs, and the note says why."""
    import transformers.dynamic_module_utils as dynamic

    remote = _remote_code_base(made["llama"], tmp_path / "remote")
    monkeypatch.setenv("PD_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # should it run anyway
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    report = stream_merge(str(made["adapter"]), str(remote), str(tmp_path / "out"))
    assert stdin.tell() == 0 and not (tmp_path / "marker").exists()
    assert any("ships its own model code, which runs only with --trust-remote-code" in n for n in report.notes)
    judged = verify(str(made["adapter"]), base=str(remote), merged=str(tmp_path / "out"))
    assert judged.verdict == "verified", render_text(judged)
    monkeypatch.setenv(large.BUDGET_VARIABLE, "10000")  # layer by layer
    assert verify(str(made["adapter"]), base=str(remote)).verdict == "verified"
    assert stdin.tell() == 0 and not (tmp_path / "marker").exists()


def test_remote_code_runs_with_the_flag(made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trust-remote-code on merge hands the choice to transformers: the base's code builds its structure."""
    import transformers.dynamic_module_utils as dynamic

    from peftdoctor.merge.command import merge_command

    remote = _remote_code_base(made["llama"], tmp_path / "remote")
    monkeypatch.setenv("PD_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends the modules folder to it
    assert merge_command(str(made["adapter"]), str(remote), str(tmp_path / "out"), trust_remote_code=True) == 0
    assert (tmp_path / "marker").read_text() == "ran"


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_text('{"the": "secret"}')
    os.chmod(secret, 0o600)
    return secret


def test_a_link_planted_during_the_merge_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    """The file rules were checked once at the start; the tokenizer was found and copied at the end,
    following links: a tokenizer.json -> 0600 secret planted meanwhile was copied into --out as 0644.
    Now each file is opened under the rules when it is read: the merge stops with one line, nothing at --out."""
    from peftdoctor.errors import UnusableInput

    base = Path(shutil.copytree(made["llama"], tmp_path / "base"))
    secret = _secret(tmp_path)

    def plant(message: str) -> None:
        if message.startswith("writing shard") and not (base / "tokenizer.json").is_symlink():
            (base / "tokenizer.json").unlink()
            (base / "tokenizer.json").symlink_to(secret)

    with pytest.raises(UnusableInput) as refused:
        stream_merge(str(made["adapter"]), str(base), str(tmp_path / "out"), progress=plant)
    assert str(refused.value) == (f"{base / 'tokenizer.json'} is a symlink pointing outside the directory; not "
                                  f"followed; nothing was left at {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_copies_take_the_umask_not_the_source_mode(made: dict[str, Path], tmp_path: Path) -> None:
    base = Path(shutil.copytree(made["llama"], tmp_path / "base"))
    os.chmod(base / "tokenizer.json", 0o600)
    os.chmod(base / "generation_config.json", 0o640)
    stream_merge(str(made["adapter"]), str(base), str(tmp_path / "out"))
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("tokenizer.json", "generation_config.json", "config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_open_inside_refuses_a_link_swapped_in_after_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window between looking at an entry and opening it: open_inside checks what it opened."""
    from peftdoctor.io import files

    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "vocab.txt").write_text("a\nb\n")
    secret = _secret(tmp_path)
    looked = files.refusal

    def look_then_swap(where: Path, name: str, **kwargs: bool) -> object:
        why = looked(where, name, **kwargs)
        (where / name).unlink()
        (where / name).symlink_to(secret)
        return why

    monkeypatch.setattr(files, "refusal", look_then_swap)
    with pytest.raises(files.FileRefused, match="vocab.txt is a symlink pointing outside the directory; not followed"):
        files.open_inside(directory / "vocab.txt")
    monkeypatch.setattr(files, "refusal", looked)
    (directory / "vocab.txt").unlink()
    (directory / "vocab.txt").symlink_to("../model/other.txt")  # a link that stays inside is fine
    (directory / "other.txt").write_text("c\n")
    with files.open_inside(directory / "vocab.txt") as fh:
        assert fh.read() == b"c\n"


def test_verify_loads_the_tokenizer_from_a_copy_made_under_the_rules(made: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """verify handed the base directory to AutoTokenizer, which follows any link planted since the start
    and would save what it read into --out: now its files are copied under the rules first."""
    from peftdoctor.io.files import FileRefused
    from peftdoctor.verification import base as basemod
    from peftdoctor.verification.facts import find_base, read_adapter

    base = Path(shutil.copytree(made["llama"], tmp_path / "base"))
    facts = read_adapter(str(made["adapter"]))
    found = find_base(facts, str(base))
    tokenizer, source = basemod.load_tokenizer(facts, found, False)
    assert tokenizer is not None and source == str(base)
    (base / "tokenizer.json").unlink()
    (base / "tokenizer.json").symlink_to(_secret(tmp_path))
    with pytest.raises(FileRefused, match="tokenizer.json is a symlink pointing outside"):
        basemod.load_tokenizer(facts, found, False)


# Sends Ctrl-C (SIGINT) to itself at the moment torch's C extension initialiser imports numpy: an
# exception raised there is cleared by torch (numpy is optional to it), so the interrupt was lost.
_INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys


class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and "torch" in sys.modules and not os.path.exists(os.environ["PD_FIRED"]):
            open(os.environ["PD_FIRED"], "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, Interrupt())
from peftdoctor.cli.app import main

sys.argv = ["peftdoctor", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", ["merge", "verify"])
def test_ctrl_c_during_the_torch_import_is_honoured(command: str, made: dict[str, Path], tmp_path: Path) -> None:
    """Both ran on to exit 0 with the merged model written."""
    env = {**os.environ, "PD_FIRED": str(tmp_path / "fired")}
    out = tmp_path / "parent" / "out"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT, command, str(made["adapter"]), "--base",
                           str(made["llama"]), "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert (tmp_path / "fired").exists(), done.stderr[-2000:]
    assert done.returncode == 130 and done.stderr.strip().splitlines()[-1] == "peftdoctor: interrupted", done.stderr
    assert list(out.parent.iterdir()) == []  # nothing written, no staging directory left


def _destination(kind: str, tmp_path: Path) -> Path:
    """An --out of each kind; the accepted ones leave nothing behind when the command refuses."""
    out = tmp_path / "dest" / "out"
    out.parent.mkdir()
    if kind == "empty directory":
        out.mkdir()
    elif kind == "directory holding a file":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif kind == "file":
        out.write_text("mine")
    elif kind == "link to an empty directory":
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    elif kind == "missing parent":
        out = out.parent / "missing" / "out"
    return out


@pytest.mark.parametrize("kind, accepted", [("new", True), ("empty directory", True),
                                            ("directory holding a file", False), ("file", False),
                                            ("link to an empty directory", False), ("missing parent", False)])
def test_merge_and_verify_accept_the_same_out(kind: str, accepted: bool, made: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """merge refused the empty directory verify accepted: both now ask io/staging.check_out."""
    from peftdoctor.merge.command import merge_command
    from peftdoctor.verification.command import verify_command

    codes = []
    for command in ("merge", "verify"):
        case = tmp_path / command
        case.mkdir()
        out = _destination(kind, case)
        before = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
        if command == "merge":
            codes.append(merge_command(str(made["adapter"]), str(made["llama"]), str(out)))
        else:
            codes.append(verify_command(str(made["adapter"]), str(made["llama"]), "cpu", "auto", str(out), "text",
                                        None, False))
        err = capsys.readouterr().err
        if accepted:
            assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        else:
            assert f"--out {out}: " in err.splitlines()[-1]
            assert (sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None) == before
    assert codes == ([0, 0] if accepted else [2, 2])


def test_verify_out_write_failure_exits_2_naming_the_file(made: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A real failed write: while verify saves, the file size limit (RLIMIT_FSIZE, SIGXFSZ ignored so the
    write returns EFBIG) is under the merged weights' size. It was a failed step, verdict "failed", exit 1."""
    import resource
    import signal

    from peftdoctor.verification import save
    from peftdoctor.verification.command import verify_command

    real = save.staged

    @contextlib.contextmanager
    def small_files(*args: Any, **kwargs: Any) -> Iterator[Path]:
        with real(*args, **kwargs) as staging:  # the limit holds while the model is written into staging
            limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20000, limits[1]))
            try:
                yield staging
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)
                signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(save, "staged", small_files)
    out = tmp_path / "out"
    capsys.readouterr()
    code = verify_command(str(made["adapter"]), str(made["llama"]), "cpu", "auto", str(out), "text", None, False)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.err[-2000:]
    assert captured.err.strip().splitlines()[-1] == (
        f"peftdoctor: --out {out}: writing the weights (model*.safetensors) failed (Error while serializing: I/O "
        f"error: File too large (os error 27)); nothing was left at {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_verify_tokenizer_copy_keeps_its_own_code_with_the_flag(made: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer that ships its own class (auto_map) loads from the private copy with --trust-remote-code
    (its .py files are copied too); without it that class never runs and stdin is never read."""
    import transformers.dynamic_module_utils as dynamic

    from peftdoctor.verification import base as basemod
    from peftdoctor.verification.facts import find_base, read_adapter

    base = Path(shutil.copytree(made["llama"], tmp_path / "base"))
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_pd.PdTokenizer"]}
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "tokenization_pd.py").write_text("from transformers import PreTrainedTokenizerFast\n\n\n"
                                             "class PdTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    facts = read_adapter(str(made["adapter"]))
    found = find_base(facts, str(base))
    assert type(basemod.load_tokenizer(facts, found, True)[0]).__name__ == "PdTokenizer"
    without = basemod.load_tokenizer(facts, found, False)[0]  # transformers falls back to tokenizer.json alone
    assert type(without).__name__ != "PdTokenizer" and sys.stdin.tell() == 0
