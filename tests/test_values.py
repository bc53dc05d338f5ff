"""The doctor sees the weights: values (NaN, all-zero B, ZeRO-3 empties), file length, other tools' formats.

Each case is built with real peft on a tiny Llama, and the test first shows what real peft does with it
(it loads and outputs NaN; it loads and computes exactly the base; it fails with a shape-[0] size
mismatch; safetensors refuses the file) before asserting peftdoctor's finding. Clean adapters of every
kind the suite builds stay free of these findings.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftdoctor import check
from tests import adapters as A

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
VALUE_CODES = {"PD211", "PD212", "PD213", "PD214", "PD215"}


def codes(path: Path) -> list[str]:
    return [f.code for f in check(str(path)).findings]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return A.make_llama_base(tmp_path_factory.mktemp("values") / "llama")


def _rewrite(adapter: Path, change: Any) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}  # not views of the file rewritten
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _logits(base: Path, adapter: Path | None) -> Any:
    from peft import PeftModel

    model = A.load_base(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model(torch.arange(12).reshape(1, 12)).logits


def test_nan_weights(base: Path, tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "nan", base)
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    _rewrite(adapter, lambda t: t[key].view(-1).__setitem__(slice(0, 3), float("nan")))
    assert torch.isnan(_logits(base, adapter)).any()  # real peft loads it without a word; outputs are NaN
    found = check(str(adapter)).findings
    nan = [f for f in found if f.code == "PD211"]
    assert nan and "3 NaN" in nan[0].message and "v_proj" in nan[0].message


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_non_finite_in_every_float_dtype(base: Path, tmp_path: Path, dtype: str) -> None:
    adapter = A.make_lora_adapter(tmp_path / dtype, base)

    def poison(tensors: dict) -> None:
        for name in list(tensors):
            tensors[name] = tensors[name].to(getattr(torch, dtype))
        first = sorted(tensors)[0]
        flat = tensors[first].view(-1)
        flat[0], flat[1] = float("inf"), float("-inf")

    _rewrite(adapter, poison)
    nan = [f for f in check(str(adapter)).findings if f.code == "PD211"]
    assert nan and "2 NaN or infinite" in nan[0].message, (dtype, nan)


def test_finite_extremes_are_not_flagged(base: Path, tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "extremes", base)

    def extremes(tensors: dict) -> None:
        for name in list(tensors):
            tensors[name] = tensors[name].to(torch.bfloat16)
        first = sorted(tensors)[0]
        flat = tensors[first].view(-1)
        flat[0], flat[1] = torch.finfo(torch.bfloat16).max, -torch.finfo(torch.bfloat16).max

    _rewrite(adapter, extremes)
    assert "PD211" not in codes(adapter)


def test_untrained_adapter_computes_the_base(base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(A.load_base(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                          task_type="CAUSAL_LM"))
    model.save_pretrained(str(tmp_path / "untrained"))  # saved before any training step
    adapter = tmp_path / "untrained"
    assert torch.equal(_logits(base, adapter), _logits(base, None))  # peft: exactly the base
    found = check(str(adapter)).findings
    assert [f.code for f in found if f.code in VALUE_CODES] == ["PD212"]
    assert "computes exactly the base" in next(f.message for f in found if f.code == "PD212")


def test_partly_untrained_adapter(base: Path, tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "partly", base)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _rewrite(adapter, lambda t: t[key].zero_())
    found = [f for f in check(str(adapter)).findings if f.code in VALUE_CODES]
    assert [f.code for f in found] == ["PD213"] and "1 of 4" in found[0].message


def test_zero3_empty_tensors(base: Path, tmp_path: Path) -> None:
    """ZeRO-3 without gathering saves every parameter as an empty tensor of shape [0]."""
    adapter = A.make_lora_adapter(tmp_path / "zero3", base)
    _rewrite(adapter, lambda t: t.update({k: torch.empty(0) for k in list(t)}))
    from peft import PeftModel

    with pytest.raises(RuntimeError, match=r"torch.Size\(\[0\]\)"):
        PeftModel.from_pretrained(A.load_base(base), str(adapter))
    found = check(str(adapter)).findings
    zero3 = [f for f in found if f.code == "PD214"]
    assert zero3 and "ZeRO-3" in zero3[0].message and "stage3_gather_16bit_weights_on_model_save" in zero3[0].fix
    assert not any(f.code == "PD206" for f in found), "no 'set r to 0' advice for an un-gathered save"


def test_file_longer_than_its_header(base: Path, tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "longer", base)
    path = adapter / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with pytest.raises(SafetensorError, match="not fully covered"):
        load_file(str(path))
    assert "PD215" in codes(adapter)


def test_clean_adapters_have_no_value_findings(tmp_path_factory: pytest.TempPathFactory) -> None:
    zoo = A.make_zoo(tmp_path_factory.mktemp("zoo"))
    for name, path in zoo.items():
        if name.startswith("base-"):
            continue
        assert not set(codes(path)) & VALUE_CODES, name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def _peft_refuses(directory: Path) -> str:
    from peft import PeftConfig

    with pytest.raises(Exception) as raised:
        PeftConfig.from_pretrained(str(directory))
    return f"{type(raised.value).__name__}: {raised.value}"


def test_mlx_lm_adapter_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "mlx"
    directory.mkdir()
    # What mlx_lm.lora writes: its training arguments, and adapters.safetensors with lora_a/lora_b keys.
    (directory / "adapter_config.json").write_text(json.dumps({
        "adapter_path": "adapters", "batch_size": 4, "data": "data", "fine_tune_type": "lora", "iters": 600,
        "learning_rate": 1e-05, "lora_parameters": {"dropout": 0.0, "keys": ["self_attn.q_proj"], "rank": 8,
                                                    "scale": 20.0},
        "model": "mlx-community/Llama-3.2-1B-Instruct-4bit", "num_layers": 16, "train": True}))
    A.write_safetensors_header(directory / "adapters.safetensors",
                               {"model.layers.15.self_attn.q_proj.lora_a": ("F32", (2048, 8))})
    assert "peft_type" in _peft_refuses(directory)  # peft: KeyError 'peft_type'
    done = _cli("check", str(directory))
    assert done.returncode == 2 and "PD009" in done.stdout and "mlx_lm.fuse" in done.stdout
    assert "peft_type" not in done.stdout  # not the old advice to add peft_type


@pytest.mark.parametrize(("layout", "kind", "says"), [
    ({"adapter_config.json": {"config": {"reduction_factor": 16}, "hidden_size": 768, "model_class": "BertModel",
                              "model_name": "bert-base-uncased", "model_type": "bert", "name": "sst-2",
                              "version": "3.2.1"}, "pytorch_adapter.bin": b"x"}, "adapterhub", "load_adapter"),
    ({"adapter_config.json": {"_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"],
                              "hidden_size": 4096, "model_type": "llama"}}, "model-config", "save_pretrained"),
    ({"pytorch_lora_weights.safetensors": None}, "diffusers-lora", "load_lora_weights"),
    ({"my_style.safetensors": "kohya"}, "kohya-lora", "load_lora_weights"),
])
def test_other_formats_are_named(tmp_path: Path, layout: dict, kind: str, says: str) -> None:
    directory = tmp_path / kind
    directory.mkdir()
    for name, content in layout.items():
        if isinstance(content, dict):
            (directory / name).write_text(json.dumps(content))
        elif content == "kohya":
            A.write_safetensors_header(directory / name, {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down"
                                                          ".weight": ("F16", (4, 320))},
                                       metadata={"ss_network_module": "networks.lora"})
        elif content is None:
            A.write_safetensors_header(directory / name, {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight":
                                                          ("F32", (4, 320))})
        else:
            (directory / name).write_bytes(content)
    if "adapter_config.json" in layout:
        _peft_refuses(directory)  # peft cannot read it as an adapter config
    done = _cli("check", str(directory), "--format", "json")
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["kind"] == kind and [f["code"] for f in report["findings"]] == ["PD009"]
    assert says in report["findings"][0]["fix"]


def test_value_scan_reads_in_bounded_chunks(tmp_path: Path) -> None:
    """A tensor larger than the read chunk is scanned in pieces; the verdict does not depend on the split."""
    from peftdoctor.io import values

    directory = tmp_path / "big"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1,
                                                               "target_modules": ["q_proj"]}))
    rows = values.CHUNK // 4 + 3  # float32 values: one more chunk than fits
    path = directory / "adapter_model.safetensors"
    A.write_safetensors_header(path, {"base_model.model.q_proj.lora_A.weight": ("F32", (1, 1)),
                                      "base_model.model.q_proj.lora_B.weight": ("F32", (rows, 1))},
                               max_data=4 * (rows + 1))
    with open(path, "r+b") as fh:  # the data section is zeros: put a NaN in the very last value
        fh.seek(-4, 2)
        fh.write(struct.pack("<f", float("nan")))
    found = check(str(directory)).findings
    assert any(f.code == "PD211" and "1 NaN" in f.message for f in found)
    assert not any(f.code == "PD212" for f in found)  # the NaN makes that B not all zero


def test_merge_refuses_an_untrained_adapter(base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(A.load_base(base), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(str(tmp_path / "untrained"))
    out = tmp_path / "merged"
    done = _cli("merge", str(tmp_path / "untrained"), "--base", str(base), "--out", str(out))
    assert done.returncode == 1 and "PD212" in done.stderr and not out.exists(), done.stderr
    allowed = _cli("merge", str(tmp_path / "untrained"), "--base", str(base), "--out", str(out), "--allow-noop")
    assert allowed.returncode == 0 and out.is_dir(), allowed.stderr


def test_merge_refuses_non_finite_weights(base: Path, tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "nan", base)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _rewrite(adapter, lambda t: t[key].view(-1).__setitem__(0, float("inf")))
    out = tmp_path / "merged"
    done = _cli("merge", str(adapter), "--base", str(base), "--out", str(out))
    assert done.returncode == 1 and "PD211" in done.stderr and not out.exists(), done.stderr
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("code,edit", [
    ("PD214", lambda t: t.update({k: torch.empty(0) for k in list(t) if "lora_A" in k})),  # ZeRO-3, not gathered
    ("PD206", lambda t: t.update({k: torch.ones(3, v.shape[1]) for k, v in list(t.items()) if "lora_A" in k})),
])
def test_merge_refuses_weights_peft_cannot_load(base: Path, tmp_path: Path, code: str, edit: Any) -> None:
    """Weights real peft refuses to load (a size mismatch in load_state_dict) are refused by merge up front
    with check's own finding in one line, instead of peft's multi-line error from the middle of the stream."""
    from peft import PeftModel

    adapter = A.make_lora_adapter(tmp_path / "adapter", base)
    _rewrite(adapter, edit)
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(A.load_base(base), str(adapter))
    out = tmp_path / "merged"
    done = _cli("merge", str(adapter), "--base", str(base), "--out", str(out))
    refusal = [line for line in done.stderr.splitlines() if "merge refused" in line]
    assert done.returncode == 1 and len(refusal) == 1 and code in refusal[0] and not out.exists(), done.stderr
