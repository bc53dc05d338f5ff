"""The generated architecture tables and the base-aware rules (PD115, PD220-PD222), against real peft.

Each finding is preceded by what real peft does with the same adapter on the same base.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import pytest

from peftdoctor import check
from peftdoctor.errors import UnusableInput
from peftdoctor.peft import architectures
from peftdoctor.rules.base import SKIPPED
from tests.adapters import (
    edited_copy,
    load_base,
    make_gpt2_base,
    make_llama_base,
    make_lora_adapter,
    make_zoo,
    perturb_trainable,
)

ROOT = Path(__file__).resolve().parent.parent
BASE_CODES = {"PD220", "PD221", "PD222"}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_architectures",
                                                  ROOT / "scripts" / "generate_architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


# --------------------------------------------------------------------------- the table


def test_generator_reproduces_committed_entries_byte_for_byte() -> None:
    import transformers

    table = architectures.table()
    if transformers.__version__ != table["transformers"]:
        pytest.skip(f"the table was made by transformers {table['transformers']}, "
                    f"{transformers.__version__} is installed")
    gen = _generator()
    fresh = gen.generate(["llama", "gpt2", "bert", "qwen2"])
    assert fresh["skipped"] == {}
    for model_type, entry in fresh["model_types"].items():
        assert gen.entry_text(entry) == gen.entry_text(table["model_types"][model_type]), model_type
    assert gen.dumps(table) == Path(architectures.TABLE).read_text("utf-8"), "the file is not in the generator's bytes"


def test_table_covers_transformers_model_types() -> None:
    table = architectures.table()
    assert len(table["model_types"]) > 200
    assert set(table["model_types"]).isdisjoint(table["skipped"])
    # check parses only the entry it needs; it must be the entry of the whole table
    assert all(architectures.entry(m) == e for m, e in table["model_types"].items())
    assert architectures.entry("no-such-model") is None
    assert architectures.transformers_version() == table["transformers"]
    llama = table["model_types"]["llama"]["modules"]
    assert llama["model.layers.{i}.self_attn.k_proj"] == ["Linear", ["head_dim*num_key_value_heads", "hidden_size"]]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"llama": make_llama_base(root / "llama"), "gpt2": make_gpt2_base(root / "gpt2"),
            "llama-wide": _wide_llama(root / "llama-wide")}


def _wide_llama(directory: Path) -> Path:
    """Another size of the same architecture: hidden 32 with 4 heads (a "13B" to the zoo's "7B")."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama-wide"])
def test_shapes_from_config_json_equal_the_saved_weights(bases: dict[str, Path], name: str) -> None:
    """Every weight of a real base has the shape the table computes from its config.json alone."""
    from safetensors import safe_open

    config = json.loads((bases[name] / "config.json").read_text())
    arch = architectures.for_config(config)
    assert arch is not None
    checked = 0
    with safe_open(str(bases[name] / "model.safetensors"), "np") as weights:
        for key in weights.keys():
            if not key.endswith(".weight"):
                continue
            layer = arch.layer(key[: -len(".weight")])
            assert layer is not None and layer.shape is not None, key
            assert layer.shape == tuple(weights.get_slice(key).get_shape()), key
            checked += 1
    assert checked >= 10


def test_derived_attribute_when_config_json_omits_it() -> None:
    """An old Llama config.json has no head_dim: transformers computes hidden_size // num_attention_heads."""
    arch = architectures.for_config({"model_type": "llama", "hidden_size": 5120, "num_attention_heads": 40,
                                     "num_key_value_heads": 40, "intermediate_size": 13824, "vocab_size": 32000})
    assert arch is not None
    layer = arch.layer("model.layers.3.self_attn.k_proj")
    assert layer is not None and layer.shape == (5120, 5120)


# --------------------------------------------------------------------------- PD220


def test_target_modules_of_another_architecture(bases: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    adapter = make_lora_adapter(tmp_path / "gpt2-lora", bases["gpt2"])  # target_modules ["c_attn"]
    with pytest.raises(ValueError, match=r"Target modules \{'c_attn'\} not found in the base model"):
        PeftModel.from_pretrained(load_base(bases["llama"]), str(adapter))
    report = check(str(adapter), peft="0.21.2", base=str(bases["llama"]))
    found = [f for f in report.findings if f.code == "PD220"]
    assert len(found) == 1 and "c_attn" in found[0].message and "llama" in found[0].message
    assert "PD220" not in codes(check(str(adapter), peft="0.21.2", base=str(bases["gpt2"])))


def test_query_key_value_on_llama(bases: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(load_base(bases["llama"]), LoraConfig(target_modules=["query_key_value"]))
    adapter = _edited(make_lora_adapter(tmp_path / "lora", bases["llama"]), tmp_path / "qkv",
                      target_modules=["query_key_value"])
    assert "PD220" in codes(check(str(adapter), peft="0.21.2", base=str(bases["llama"])))


def test_regex_and_partial_targets_are_not_flagged(bases: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    regex = r".*\.layers\.1\.self_attn\.(q|v)_proj"
    full_name = ["model.layers.1.self_attn.q_proj"]
    for accepted in (regex, ["q_proj", "c_attn"], full_name):  # peft accepts each (a partial list silently)
        get_peft_model(load_base(bases["llama"]), LoraConfig(target_modules=accepted))
    adapter = make_lora_adapter(tmp_path / "lora", bases["llama"])
    for i, targets in enumerate((regex, ["q_proj", "c_attn"], full_name)):
        edited = _edited(adapter, tmp_path / f"t{i}", target_modules=targets)
        assert "PD220" not in codes(check(str(edited), peft="0.21.2", base=str(bases["llama"])))


# --------------------------------------------------------------------------- PD221


def test_adapter_for_another_size_of_the_base(bases: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    adapter = make_lora_adapter(tmp_path / "lora", bases["llama"])
    with pytest.raises(RuntimeError, match="size mismatch for base_model.model.model.layers.0.self_attn.q_proj"):
        PeftModel.from_pretrained(load_base(bases["llama-wide"]), str(adapter))
    report = check(str(adapter), peft="0.21.2", base=str(bases["llama-wide"]))
    found = [f for f in report.findings if f.code == "PD221"]
    assert found and all(f.severity.value == "error" for f in found)
    assert any("lora_A takes 16 inputs, the base layer has 32" in f.message for f in found), found
    assert not BASE_CODES & set(codes(check(str(adapter), peft="0.21.2", base=str(bases["llama"]))))


# --------------------------------------------------------------------------- PD222


def test_vocabulary_added_in_training(bases: dict[str, Path], tmp_path: Path) -> None:
    """Trained with 8 added tokens (resize_token_embeddings): LoRA on embed_tokens, lm_head saved whole."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    model = load_base(bases["llama"])
    model.resize_token_embeddings(model.config.vocab_size + 8)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"],
                                                  modules_to_save=["lm_head"]))
    perturb_trainable(peft_model)
    adapter = tmp_path / "resized"
    peft_model.save_pretrained(str(adapter))
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(load_base(bases["llama"]), str(adapter))
    report = check(str(adapter), peft="0.21.2")  # base_model_name_or_path is the local base
    found = [f for f in report.findings if f.code == "PD222"]
    assert len(found) == 1 and "resize_token_embeddings" in found[0].fix, report.findings
    assert "vocabulary of 100 tokens" in found[0].message
    assert "PD221" not in codes(report)


# --------------------------------------------------------------------------- PD115 with the base


def test_tied_layer_adapted_on_a_tying_base(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "tied"
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, tie_word_embeddings=True)).save_pretrained(str(base))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(load_base(base), LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    assert any("tie_word_embeddings=True" in str(w.message) for w in caught)
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    found = [f for f in check(str(adapter), peft="0.21.2").findings if f.code == "PD115"]
    assert len(found) == 1 and "the base sets tie_word_embeddings" in found[0].message
    # config.json silent on tying: the table's default for the model_type decides (llama: untied)
    config = json.loads((base / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    (base / "config.json").write_text(json.dumps(config))
    assert "PD115" not in codes(check(str(adapter), peft="0.21.2"))


# --------------------------------------------------------------------------- no base, no false positives


def test_without_a_base_the_checks_are_skipped_once(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = make_lora_adapter(tmp_path / "lora", bases["llama"], base_model_name_or_path="nobody/not-cached")
    report = check(str(adapter), peft="0.21.2")
    notes = [s for s in report.skipped if s.startswith(SKIPPED)]
    assert len(notes) == 1 and "nobody/not-cached" in notes[0] and "--base" in notes[0]
    with pytest.raises(UnusableInput, match="--base"):
        check(str(adapter), peft="0.21.2", base=str(tmp_path / "missing"))


def test_every_clean_zoo_adapter_stays_clean_on_its_own_base(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", base_model_name_or_path="peftdoctor-tests/tiny-base")
    for name, path in zoo.items():
        if name.startswith("base-"):
            continue
        report = check(str(path), peft="0.21.2", base=str(zoo["base-" + name.rsplit("-", 1)[1]]))
        assert not any(s.startswith(SKIPPED) for s in report.skipped), (name, report.skipped)
        assert [f for f in report.findings if f.severity.value != "info"] == [], (name, report.findings)


def test_cli_base_option(bases: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from peftdoctor.cli import app

    adapter = make_lora_adapter(tmp_path / "gpt2-lora", bases["gpt2"])
    result = CliRunner().invoke(app, ["check", str(adapter), "--peft", "0.21.2", "--base", str(bases["llama"]),
                                      "--format", "json"])
    assert result.exit_code == 1, result.output
    assert "PD220" in {f["code"] for f in json.loads(result.stdout)["findings"]}


def _edited(src: Path, dst: Path, **changes: object) -> Path:
    return edited_copy(src, dst, changes)


def test_an_uncached_base_costs_no_huggingface_hub_import(tmp_path: Path) -> None:
    """Every check now looks for the base: a repo id the cache has no folder for is answered without
    importing huggingface_hub (a third of a second of check's start-up)."""
    import subprocess
    import sys

    code = ("import sys; from peftdoctor import check; "
            "r = check('fixtures/tiny-llama-lora', peft='0.21.2'); "
            "print('huggingface_hub' in sys.modules, len(r.skipped))")
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.stdout.split() == ["False", "1"], out.stderr


def test_base_config_from_the_hub_cache(bases: dict[str, Path], tmp_path: Path) -> None:
    """base_model_name_or_path as a repo id whose config.json is in the hub cache (huggingface_hub's layout)."""
    import os
    import subprocess
    import sys

    snapshot = tmp_path / "cache" / "models--owner--tiny-llama" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(bases["llama"] / "config.json", snapshot / "config.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    adapter = make_lora_adapter(tmp_path / "gpt2-lora", bases["gpt2"], base_model_name_or_path="owner/tiny-llama")
    code = (f"from peftdoctor import check; r = check({str(adapter)!r}, peft='0.21.2'); "
            "print(sorted({f.code for f in r.findings}), len(r.skipped))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    # PD220: no target module is in the Llama tree (peft raises); PD223: the GPT-2 paths of its tensors are not either
    assert out.stdout.strip() == "['PD220', 'PD223'] 0", out.stderr[-2000:]
