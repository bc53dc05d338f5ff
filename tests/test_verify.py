"""verify on real tiny bases and real peft adapters: each adapter kind, and the traps it must catch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft", reason="verify needs the verify extra (torch, transformers, peft)")

from peftdoctor.verification import render_text, to_dict, verify  # noqa: E402
from tests import adapters as A  # noqa: E402

STEPS = ["resolve base", "device", "load base", "load adapter", "probe adapted", "merge", "probe merged",
         "save", "reload"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"llama": A.make_llama_base(root / "llama"), "gpt2": A.make_gpt2_base(root / "gpt2"),
            "bert": A.make_bert_classifier_base(root / "bert"), "tied": make_tied_llama(root / "tied")}


def make_tied_llama(directory: Path) -> Path:
    """A Llama whose lm_head shares its matrix with embed_tokens (tie_word_embeddings=True)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = A._build_tokenizer(100)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    return A._save_base(directory, LlamaForCausalLM, config, tokenizer, 0)


def codes(report: Any) -> set[str]:
    return {f.code for f in report.findings}


def assert_deployable(report: Any, out: Path) -> None:
    assert report.verdict == "verified", render_text(report)
    assert [s.name for s in report.steps] == STEPS
    assert all(s.status == "ok" and s.seconds >= 0 for s in report.steps)
    assert [p.name for p in report.parity] == ["merged vs adapted", "reloaded vs adapted"]
    for parity in report.parity:
        assert parity.passed and parity.max_rel <= parity.tolerance and parity.top1_agreement == 1.0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names, names
    assert not any(n.endswith(".bin") for n in names)  # safetensors only
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]  # no staging left behind
    assert report.out == str(out)


@pytest.mark.parametrize("family,make", [
    ("llama", A.make_lora_adapter),
    ("llama", A.make_rslora_adapter),
    ("llama", A.make_dora_adapter),
    ("gpt2", A.make_lora_adapter),  # Conv1D layers: fan_in_fan_out=True
])
def test_mergeable_lora_kinds_verify_and_save(bases: dict[str, Path], tmp_path: Path, family: str, make: Any) -> None:
    adapter = make(tmp_path / "adapter", bases[family])
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    assert_deployable(report, tmp_path / "merged")
    assert report.step("probe adapted").detail.startswith("adapter changes the output by")
    assert not codes(report) & {"PD303", "PD304", "PD305", "PD307"}
    if family == "gpt2":  # GPT-2 ties lm_head to wte; the adapter does not touch them, so the tie stays
        saved = json.loads((tmp_path / "merged" / "config.json").read_text())
        assert saved.get("tie_word_embeddings", True) is True
        assert "generation_config.json" in {p.name for p in (tmp_path / "merged").iterdir()}


def test_bfloat16_merges_in_float32_and_casts(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    report = verify(str(adapter), dtype="bfloat16", out=str(tmp_path / "merged"))
    assert report.dtype == "bfloat16" and report.verdict == "verified", render_text(report)
    assert report.step("merge").detail.startswith("merged in float32, cast to bfloat16")
    assert all(p.tolerance == 4e-2 for p in report.parity)
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"


def test_tolerance_option_decides_the_verdict(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    # bfloat16 differs from the float32-merged-then-cast model by far more than 1e-9 of the scale.
    report = verify(str(adapter), dtype="bfloat16", tolerance=1e-9)
    assert report.verdict == "failed" and "PD304" in codes(report)
    assert report.parity[0].tolerance == 1e-9 and report.parity[0].max_rel > 1e-9


def test_classifier_head_in_modules_to_save(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_modules_to_save_adapter(tmp_path / "adapter", bases["bert"])
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    assert_deployable(report, tmp_path / "merged")
    # The trained head, not the base's, is what the merged model carries.
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as trained, \
            safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as merged:
        key = next(k for k in trained.keys() if k.endswith("classifier.weight"))
        assert (trained.get_tensor(key) == merged.get_tensor("classifier.weight")).all()


def test_classifier_head_missing_from_modules_to_save(tmp_path: Path) -> None:
    """A SEQ_CLS adapter on a base without a head, that does not save the head: random on every load."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    tokenizer = A._build_tokenizer(100)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    headless = A._save_base(tmp_path / "bert-headless", BertModel, config, tokenizer, 0)
    adapter = A.make_lora_adapter(tmp_path / "adapter", headless)
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if "classifier" not in k}, str(weights))
    data = json.loads((adapter / "adapter_config.json").read_text())
    data["modules_to_save"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(data))
    report = verify(str(adapter))
    assert report.verdict == "failed"
    head = [f for f in report.findings if f.code == "PD302"]
    assert head and "classifier.weight" in " ".join(f.message for f in head)


def test_resized_vocabulary_with_added_tokens(bases: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    adapter = A.make_added_tokens_adapter(tmp_path / "adapter", bases["llama"])
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    assert_deployable(report, tmp_path / "merged")
    assert "PD309" in codes(report)
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["vocab_size"] == 102
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "merged"))) == 102  # the adapter's tokenizer shipped


def test_tied_embeddings_with_adapted_lm_head_are_saved_untied(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["tied"], target_modules=["q_proj", "v_proj", "lm_head"])
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    assert_deployable(report, tmp_path / "merged")
    assert "PD307" in codes(report)
    assert report.step("reload").detail.endswith("tie_word_embeddings=False")
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False
    from safetensors import safe_open

    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as merged:
        head, embed = merged.get_tensor("lm_head.weight"), merged.get_tensor("model.embed_tokens.weight")
    assert not (head == embed).all()  # both trained matrices are kept, not one re-tied onto the other


@pytest.mark.parametrize("kind", ["prompt", "prefix", "p-tuning"])
def test_prompt_learning_is_not_mergeable_but_verified(bases: dict[str, Path], tmp_path: Path, kind: str) -> None:
    if kind == "prompt":
        adapter = A.make_prompt_tuning_adapter(tmp_path / "adapter", bases["llama"])
    elif kind == "prefix":
        adapter = A.make_prefix_tuning_adapter(tmp_path / "adapter", bases["llama"])
    else:
        from peft import PromptEncoderConfig

        adapter = A.save_adapter(tmp_path / "adapter", bases["llama"], PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16))
    report = verify(str(adapter), out=str(tmp_path / "merged"))
    assert report.verdict == "verified" and not report.mergeable, render_text(report)
    assert [s.name for s in report.steps] == STEPS[:5]
    assert "not mergeable, deploy with PeftModel" in render_text(report)
    assert "PD308" in codes(report) and not (tmp_path / "merged").exists()


def test_adapter_that_changes_nothing_is_flagged(bases: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v * 0 if "lora_B" in k else v for k, v in load_file(str(weights)).items()}, str(weights))
    report = verify(str(adapter))
    assert report.verdict == "failed" and "PD303" in codes(report)


def test_load_failure_maps_to_check_findings(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    data = json.loads((adapter / "adapter_config.json").read_text())
    data["r"] = 8  # the weights hold rank 4
    (adapter / "adapter_config.json").write_text(json.dumps(data))
    report = verify(str(adapter))
    assert report.verdict == "failed" and report.step("load adapter").status == "failed"
    assert {"PD301", "PD206"} <= codes(report)


def test_json_shape_is_stable(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.make_lora_adapter(tmp_path / "adapter", bases["llama"])
    data = to_dict(verify(str(adapter)))
    assert data["format_version"] == 1 and data["verdict"] == "verified" and data["out"] is None
    assert {"name", "status", "seconds", "detail"} == set(data["steps"][0])
    assert {"max_abs", "max_rel", "top1_agreement", "tolerance", "passed"} <= set(data["parity"][0])
    assert any("temporary directory" in n for n in data["notes"])
    json.dumps(data, sort_keys=True)
