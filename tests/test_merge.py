"""Streaming merge equals peft's merge_and_unload + save_pretrained, tensor for tensor (float32, CPU).

Bases are saved in many small shards so that every merge crosses shard boundaries; the reference
is what a user would run: PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained().
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from tests import adapters as A

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.merge import command as merge_cli  # noqa: E402
from peftdoctor.merge import run as merge_run  # noqa: E402
from peftdoctor.merge import stream_merge  # noqa: E402


def _sharded(made: Path, directory: Path) -> Path:
    A.load_base(made).save_pretrained(str(directory), max_shard_size="20KB")
    for path in made.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-bases")
    return {"llama": _sharded(A.make_llama_base(root / "llama-one"), root / "llama"),
            "gpt2": _sharded(A.make_gpt2_base(root / "gpt2-one"), root / "gpt2")}


def _reference(base: Path, adapter: Path, out: Path, untie: bool = False) -> None:
    from peft import PeftModel

    model = A.load_base(base)
    if untie:  # peft's own advice for adapted tied embeddings: untie, then merge
        model.config.tie_word_embeddings = False
        model.get_output_embeddings().weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(str(out))


def _tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


CASES: dict[str, tuple[str, Callable[..., Path], dict[str, Any]]] = {
    "lora": ("llama", A.make_lora_adapter, {}),
    "all-linear": ("llama", A.make_lora_adapter, {"target_modules": "all-linear"}),
    "rslora": ("llama", A.make_rslora_adapter, {}),
    "dora": ("llama", A.make_dora_adapter, {}),
    "patterns": ("llama", A.make_pattern_lora_adapter, {}),
    "gpt2-conv1d": ("gpt2", A.make_lora_adapter, {}),
    "gpt2-dora": ("gpt2", A.make_dora_adapter, {}),
    "lora-bias": ("gpt2", A.make_lora_adapter, {"lora_bias": True}),
    "modules-to-save": ("llama", A.make_modules_to_save_adapter, {"modules_to_save": ["lm_head"]}),
    "embedding": ("llama", A.make_lora_adapter, {"target_modules": ["embed_tokens", "q_proj", "lm_head"]}),
    "tied-embedding": ("gpt2", A.make_lora_adapter, {"target_modules": ["wte", "c_attn"]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_identical_to_peft(case: str, bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    family, make, kwargs = CASES[case]
    base = bases[family]
    adapter = make(tmp_path / "adapter", base, **kwargs)
    pools: list[Any] = []

    class Spy(merge_run.BufferPool):
        def __init__(self, keep_bytes: int) -> None:
            super().__init__(keep_bytes)
            pools.append(self)

    monkeypatch.setattr(merge_run, "BufferPool", Spy)
    report = stream_merge(str(adapter), str(base), str(tmp_path / "out"))
    if case in ("lora", "all-linear"):  # same-sized modules: later ones reuse earlier buffers, dirty
        assert pools[0].reused >= 4
    _reference(base, adapter, tmp_path / "ref", untie=case == "tied-embedding")
    ours, theirs = _tensors(tmp_path / "out"), _tensors(tmp_path / "ref")
    assert set(ours) == set(theirs)
    differ = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert differ == []
    assert report.tensors_merged > 0
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == len(list(base.glob("*.safetensors"))) >= 2
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    if case == "tied-embedding":
        assert report.untied == ("lm_head.weight",)
        assert '"tie_word_embeddings": false' in (tmp_path / "out" / "config.json").read_text()


def test_tokenizer_comes_from_the_directory_that_ships_one(bases: dict[str, Path], tmp_path: Path) -> None:
    """An adapter with a partial tokenizer (a special_tokens_map.json alone) does not ship one: the merged
    model takes the base's whole tokenizer (it once took that one file and no tokenizer loaded); an adapter
    with its own tokenizer (added tokens) wins over the base's."""
    from transformers import AutoTokenizer

    base = bases["llama"]
    adapter = A.make_lora_adapter(tmp_path / "adapter", base)
    (adapter / "special_tokens_map.json").write_text('{"pad_token": "<pad>"}')
    stream_merge(str(adapter), str(base), str(tmp_path / "partial"))
    names = sorted(p.name for p in (tmp_path / "partial").iterdir() if "token" in p.name)
    assert names == sorted(p.name for p in base.iterdir() if "token" in p.name) and "tokenizer.json" in names
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "partial"))) == len(AutoTokenizer.from_pretrained(str(base)))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens(["<added-in-training>"])
    tokenizer.save_pretrained(str(adapter))
    stream_merge(str(adapter), str(base), str(tmp_path / "own"))
    assert "<added-in-training>" in AutoTokenizer.from_pretrained(str(tmp_path / "own")).get_vocab()


def test_merged_model_loads_with_transformers(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    stream_merge(str(adapter), str(bases["llama"]), str(tmp_path / "out"), dtype="bfloat16")
    model = A.load_base(tmp_path / "out")
    assert model.dtype == torch.bfloat16


def test_write_failure_leaves_no_output(bases: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    real, calls = merge_run.write_shard, []

    def fail_on_second(path: Path, shard: Any, produce: Any, **options: Any) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, shard, produce, **options)

    capsys.readouterr()
    monkeypatch.setattr(merge_run, "write_shard", fail_on_second)
    code = merge_cli.merge_command(str(adapter), str(bases["llama"]), str(tmp_path / "out"), fmt="json")
    err = capsys.readouterr().err
    assert code == 2 and "disk full" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging directory left behind


def test_corrupt_shard_is_one_line_exit_2(bases: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = Path(shutil.copytree(bases["llama"], tmp_path / "base"))
    adapter = A.make_lora_adapter(tmp_path / "adapter", base)
    shard = sorted(base.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    capsys.readouterr()
    code = merge_cli.merge_command(str(adapter), str(base), str(tmp_path / "out"), fmt="json")
    err = capsys.readouterr().err
    assert code == 2 and shard.name in err and "truncated" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_out_is_refused(bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert merge_cli.merge_command(str(adapter), str(bases["llama"]), str(tmp_path / "out")) == 2
    assert "directory is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_non_lora_is_refused_exit_1(bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = A.make_ia3_adapter(tmp_path / "adapter", bases["llama"])
    capsys.readouterr()
    assert merge_cli.merge_command(str(adapter), str(bases["llama"]), str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "IA3" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_interrupted_process_leaves_no_complete_output(bases: dict[str, Path], tmp_path: Path) -> None:
    """A merge killed mid-way (SIGKILL: no cleanup runs) leaves only a hidden .partial directory."""
    import os
    import signal
    import subprocess
    import sys

    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    script = ("import sys, time; from peftdoctor.merge import stream, run\n"
              "real = stream.write_shard\n"
              "def slow(*a, **k):\n    real(*a, **k); print('shard', flush=True); time.sleep(60)\n"
              "run.write_shard = slow\n"
              f"run.stream_merge({str(adapter)!r}, {str(bases['llama'])!r}, {str(tmp_path / 'out')!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"shard"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "adapter"]
    assert all(name.startswith(".out.partial-") for name in leftovers)


def test_merge_does_not_import_torch_until_inputs_are_read(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from peftdoctor.merge import merge_command\n"
            f"rc = merge_command({str(tmp_path / 'nope')!r}, None, {str(tmp_path / 'out')!r})\n"
            "assert rc == 2 and 'torch' not in sys.modules, rc\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize("case", ["lora", "gpt2-conv1d", "lora-bias", "modules-to-save", "embedding", "tied-embedding"])
def test_overlapped_path_writes_the_same_bytes_as_the_sequential_one(case: str, bases: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefilling unchanged tensors while torch loads must not change a byte of any output file;
    where the model class ties weights (gpt2's wte/lm_head) the header-only guess is abandoned."""
    import filecmp

    from peftdoctor.merge import prefill as merge_prefill

    family, make, kwargs = CASES[case]
    adapter = make(tmp_path / "adapter", bases[family], **kwargs)
    events: list[str] = []

    class Spy(merge_prefill.Prefill):
        def __init__(self, *args: Any) -> None:
            events.append("prefill")
            super().__init__(*args)

        def abandon(self) -> None:
            events.append("abandon")
            super().abandon()

    monkeypatch.setattr(merge_run, "Prefill", Spy)
    stream_merge(str(adapter), str(bases[family]), str(tmp_path / "overlapped"))
    assert events == (["prefill", "abandon"] if case == "tied-embedding" else ["prefill"])
    events.clear()
    monkeypatch.setattr(merge_run, "_header_layout", lambda *args: None)  # the sequential path
    stream_merge(str(adapter), str(bases[family]), str(tmp_path / "sequential"))
    assert events == []
    names = sorted(p.name for p in (tmp_path / "sequential").iterdir())
    assert sorted(p.name for p in (tmp_path / "overlapped").iterdir()) == names
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "overlapped", tmp_path / "sequential", names, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(names) > 3


@pytest.mark.parametrize("targets", ["all-linear", ["embed_tokens", "q_proj", "lm_head"]])
def test_bfloat16_base_equals_peft_in_bfloat16(bases: dict[str, Path], tmp_path: Path, targets: Any) -> None:
    """A base saved in bfloat16 (dtype auto): the buffers read and reused hold bf16 bytes, the product float32;
    the result equals peft's merge of the same base loaded in bfloat16, tensor for tensor."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(bases["llama"]), dtype=torch.bfloat16)
    model.save_pretrained(str(tmp_path / "base"), max_shard_size="20KB")
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"], target_modules=targets)
    report = stream_merge(str(adapter), str(tmp_path / "base"), str(tmp_path / "out"))
    ours = _tensors(tmp_path / "out")
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.bfloat16)
    theirs = PeftModel.from_pretrained(reference, str(adapter)).merge_and_unload().state_dict()
    assert report.tensors_merged > 0 and {v.dtype for v in ours.values()} == {torch.bfloat16}
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
