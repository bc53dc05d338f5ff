"""verify --merged: merged models made by real peft, right and deliberately wrong, judged tensor by tensor.

Every wrong merge is built from real peft output the way the tools that produce it go wrong: a module
the tool skipped, an rsLoRA adapter merged with plain LoRA's alpha/r (peft itself, with use_rslora
off), a merge into an already merged model (peft twice), a tensor changed that the adapter never
touches, and a bf16 merge that is right within bf16's rounding.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peftdoctor.verification import render_text, to_dict, verify
from peftdoctor.verification.command import verify_command
from tests import adapters as A

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merged")
    llama = A.make_llama_base(root / "llama")
    gpt2 = A.make_gpt2_base(root / "gpt2")
    return {"root": root, "llama": llama, "gpt2": gpt2,
            "lora": A.make_lora_adapter(root / "lora", llama),
            "rslora": A.make_rslora_adapter(root / "rslora", llama),
            "dora": A.make_dora_adapter(root / "dora", llama),
            "patterns": A.make_pattern_lora_adapter(root / "patterns", llama),
            "gpt2-lora": A.make_lora_adapter(root / "gpt2-lora", gpt2),
            "mts": A.make_modules_to_save_adapter(root / "mts", llama, modules_to_save=["lm_head"])}


def peft_merge(base: Path, adapter: Path, out: Path, dtype: Any = None, times: int = 1) -> Path:
    """What a user (or a tool built on peft) writes: from_pretrained, merge_and_unload, save_pretrained."""
    from peft import PeftModel

    model = A.load_base(base)
    if dtype is not None:
        model = model.to(dtype)
    for _ in range(times):
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(str(out))
    return out


def edit(directory: Path, change: Any) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def codes(report: Any) -> list[str]:
    return sorted(f.code for f in report.findings)


def finding(report: Any, code: str) -> Any:
    return next(f for f in report.findings if f.code == code)


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora", "patterns", "gpt2-lora", "mts"])
def test_real_peft_merges_are_right(made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    base = made["gpt2" if kind.startswith("gpt2") else "llama"]
    merged = peft_merge(base, made[kind], tmp_path / "merged")
    report = verify(str(made[kind]), base=str(base), merged=str(merged))
    assert report.verdict == "verified", render_text(report)
    assert [s.name for s in report.steps] == ["resolve base", "read merged", "compare tensors"]
    assert not [f for f in report.findings if f.severity.value == "error"]
    assert report.parity and report.parity[0].passed and report.parity[0].name.startswith("layer-wise")


def test_streamed_merge_is_right(made: dict[str, Path], tmp_path: Path) -> None:
    from peftdoctor.merge import stream_merge

    stream_merge(str(made["dora"]), str(made["llama"]), str(tmp_path / "merged"))
    assert verify(str(made["dora"]), base=str(made["llama"]), merged=str(tmp_path / "merged")).verdict == "verified"


def test_skipped_module_is_delta_missing(made: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged")
    original = load_file(str(made["llama"] / "model.safetensors"))[Q]
    edit(merged, lambda t: t.update({Q: original.clone()}))
    report = verify(str(made["lora"]), base=str(made["llama"]), merged=str(merged))
    assert report.verdict == "failed" and "PD313" in codes(report), render_text(report)
    assert finding(report, "PD313").key == Q and "never applied" in finding(report, "PD313").message
    assert [f.key for f in report.findings if f.code.startswith("PD31") and f.code != "PD312"] == [Q]
    assert not report.parity[0].passed and "PD304" in codes(report)


def test_rslora_merged_with_alpha_over_r_has_factor_one_over_sqrt_r(made: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "as-plain"
    shutil.copytree(made["rslora"], plain)
    config = json.loads((plain / "adapter_config.json").read_text())
    config["use_rslora"] = False  # what a tool that ignores use_rslora merges
    (plain / "adapter_config.json").write_text(json.dumps(config))
    merged = peft_merge(made["llama"], plain, tmp_path / "merged")
    report = verify(str(made["rslora"]), base=str(made["llama"]), merged=str(merged))
    wrong = [f for f in report.findings if f.code == "PD314"]
    assert report.verdict == "failed" and len(wrong) == 4, render_text(report)  # q and v of both layers
    r = config["r"]
    for found in wrong:
        assert f"{1 / math.sqrt(r):.4g} times its scale" in found.message  # 0.5 for r=4
        assert "rsLoRA adapter merged with lora_alpha/r" in found.message


def test_double_merge_is_applied_twice(made: dict[str, Path], tmp_path: Path) -> None:
    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged", times=2)
    report = verify(str(made["lora"]), base=str(made["llama"]), merged=str(merged))
    twice = [f for f in report.findings if f.code == "PD315"]
    assert report.verdict == "failed" and len(twice) == 4, render_text(report)
    assert all(" 2 times" in f.message for f in twice)


def test_extra_perturbed_tensor_is_reported(made: dict[str, Path], tmp_path: Path) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged")
    edit(merged, lambda t: t[name].view(-1)[3].add_(1e-3))
    report = verify(str(made["lora"]), base=str(made["llama"]), merged=str(merged))
    assert report.verdict == "failed" and codes(report) == ["PD317"], render_text(report)
    assert finding(report, "PD317").key == name and "1e-03" in finding(report, "PD317").message.replace("0.001", "1e-03")


def test_bf16_merge_is_right_within_bf16_rounding(made: dict[str, Path], tmp_path: Path) -> None:
    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged", dtype=torch.bfloat16)
    report = verify(str(made["lora"]), base=str(made["llama"]), merged=str(merged))
    assert report.verdict == "verified" and report.dtype == "bfloat16", render_text(report)
    # The bound comes from bf16's rounding: far above float32's, and the same merge judged as float32 fails.
    assert report.parity[0].tolerance > 1e-4
    float32 = peft_merge(made["llama"], made["lora"], tmp_path / "merged32")
    from safetensors.torch import load_file

    rounded = load_file(str(merged / "model.safetensors"))
    edit(float32, lambda t: t.update({Q: rounded[Q].float()}))  # bf16 values stored as float32
    assert "PD316" in codes(verify(str(made["lora"]), base=str(made["llama"]), merged=str(float32)))


def test_modules_to_save_copy_left_at_the_base(made: dict[str, Path], tmp_path: Path) -> None:
    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged")  # merged without the trained head
    report = verify(str(made["mts"]), base=str(made["llama"]), merged=str(merged))
    assert "PD321" in codes(report) and "still holds the base's values" in finding(report, "PD321").message


def test_missing_tensor_and_extra_tensor(made: dict[str, Path], tmp_path: Path) -> None:
    merged = peft_merge(made["llama"], made["lora"], tmp_path / "merged")
    name = "model.layers.0.input_layernorm.weight"

    def change(tensors: dict[str, Any]) -> None:
        del tensors[name]
        tensors["model.extra.weight"] = torch.ones(2)
    edit(merged, change)
    report = verify(str(made["lora"]), base=str(made["llama"]), merged=str(merged))
    assert report.verdict == "failed" and codes(report) == ["PD318", "PD319"], render_text(report)


def test_tied_lm_head_adapted_and_merged_into_the_shared_matrix(made: dict[str, Path], tmp_path: Path) -> None:
    """peft's merge on a tied model rewrites the shared matrix: the embedding changes too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = A._build_tokenizer(100)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    tied = A._save_base(tmp_path / "tied", LlamaForCausalLM, config, tokenizer, 0)
    adapter = A.make_lora_adapter(tmp_path / "adapter", tied, target_modules=["q_proj", "lm_head"])
    report = verify(str(adapter), base=str(tied), merged=str(peft_merge(tied, adapter, tmp_path / "naive")))
    assert report.verdict == "failed" and "PD317" in codes(report), render_text(report)
    assert finding(report, "PD317").key == "model.embed_tokens.weight"
    from peftdoctor.merge import stream_merge

    stream_merge(str(adapter), str(tied), str(tmp_path / "untied"))  # unties: both matrices kept
    assert verify(str(adapter), base=str(tied), merged=str(tmp_path / "untied")).verdict == "verified"


def test_command_line_exit_codes_and_json(made: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    right = peft_merge(made["llama"], made["lora"], tmp_path / "right")
    wrong = peft_merge(made["llama"], made["lora"], tmp_path / "wrong", times=2)
    capsys.readouterr()
    assert verify_command(str(made["lora"]), str(made["llama"]), "auto", "auto", None, "json", None, False,
                          merged=str(right)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "verified" and data["steps"][-1]["name"] == "compare tensors"
    assert verify_command(str(made["lora"]), str(made["llama"]), "auto", "auto", None, "text", None, False,
                          merged=str(wrong)) == 1
    assert "PD315" in capsys.readouterr().out
    assert verify_command(str(made["lora"]), str(made["llama"]), "auto", "auto", str(tmp_path / "o"), "text", None,
                          False, merged=str(right)) == 2
    assert verify_command(str(made["lora"]), str(made["llama"]), "auto", "auto", None, "text", None, False,
                          merged=str(tmp_path / "absent")) == 2
    assert to_dict(verify(str(made["lora"]), base=str(made["llama"]), merged=str(right)))["dtype"] == "float32"
