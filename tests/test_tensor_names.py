"""The one key grammar (peftdoctor/peft/tensor_names.py) against what real peft saves and loads.

For adapters saved by the installed peft (every LoRA variant the stream and the rules read, plus
IA3, LoHa and a modules_to_save head), each parsed name must point at a real module of the loaded
PeftModel: the adapted module holds a sub-layer named by the role (lora_A, lora_magnitude_vector,
...), and a full copy names a parameter the base really has. Names of older layouts (0.3-era
`lora_A.weight` without prefix, hand-saved `lora_A.default.weight`, 0.9-0.11 bare DoRA magnitudes,
`modules_to_save.default.` copies) are written out from those releases' save code.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from peftdoctor.peft import tensor_names
from peftdoctor.peft.tensor_names import parse
from tests import adapters as A


@pytest.mark.parametrize(("key", "module", "role", "param", "adapter"), [
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj", "lora_A",
     "weight", None),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", "model.layers.0.self_attn.q_proj", "lora_B",
     "bias", None),
    ("base_model.model.model.embed_tokens.lora_embedding_A", "model.embed_tokens", "lora_embedding_A", "", None),
    ("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector", "model.layers.1.mlp.down_proj",
     "lora_magnitude_vector", "", None),  # DoRA, peft 0.9-0.11: a bare Parameter
    ("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector.weight", "model.layers.1.mlp.down_proj",
     "lora_magnitude_vector", "weight", None),  # DoRA, peft 0.12+: a module
    ("base_model.model.model.embed_tokens.base_layer.weight", "model.embed_tokens", "base_layer", "weight", None),
    ("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta", "model.embed_tokens",
     "token_adapter", "trainable_tokens_delta", None),
    ("base_model.model.score.modules_to_save.default.weight", "score", "modules_to_save", "weight", "default"),
    ("base_model.model.score.weight", "score", "other", "weight", None),
    ("transformer.h.0.attn.c_attn.lora_A.default.weight", "transformer.h.0.attn.c_attn", "lora_A", "weight",
     "default"),  # a state dict saved by hand, adapter name kept, no PeftModel prefix
    ("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", "transformer.h.0.attn.c_attn", "lora_A", "weight",
     None),  # 0.2/0.3-era MergedLinear uses the same names over fused weights
    ("weight", "weight", "other", "", None),
    ("lora_A.weight", "lora_A", "other", "weight", None),  # a role with no module in front is not a role
])
def test_layouts_peft_has_written(key: str, module: str, role: str, param: str, adapter: str) -> None:
    name = parse(key)
    assert (name.module, name.role, name.param, name.adapter_name) == (module, role, param, adapter)


def test_ranks_from_shapes() -> None:
    a, b = parse("x.q.lora_A.weight"), parse("x.q.lora_B.weight")
    assert tensor_names.lora_rank(a, (4, 64)) == 4 and tensor_names.lora_rank(b, (64, 4)) == 4
    assert tensor_names.lora_rank(parse("x.e.lora_embedding_A"), (8, 100)) == 8
    assert tensor_names.lora_rank(parse("x.e.lora_embedding_B"), (32, 8)) == 8
    assert tensor_names.lora_rank(parse("x.q.lora_B.bias"), (64,)) is None


def test_hostile_names_parse_in_linear_time() -> None:
    key = ".".join(["lora_A"] * 200_000) + ".weight"
    assert parse(key).role == "lora_A"
    assert parse("a" * 1_000_000).role == "other"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("names")
    llama = A.make_llama_base(root / "llama")
    made = {"llama": llama, "bert": A.make_bert_classifier_base(root / "bert")}
    made["lora"] = A.make_lora_adapter(root / "lora", llama)
    made["dora"] = A.make_dora_adapter(root / "dora", llama)
    made["embedding"] = A.make_lora_adapter(root / "embedding", llama, target_modules=["embed_tokens", "q_proj"])
    made["lora-bias"] = A.make_lora_adapter(root / "lora-bias", llama, lora_bias=True)
    made["tokens"] = A.make_lora_adapter(root / "tokens", llama, trainable_token_indices=[1, 2])
    made["ia3"] = A.make_ia3_adapter(root / "ia3", llama)
    made["loha"] = A.make_loha_adapter(root / "loha", llama)
    made["head"] = A.make_modules_to_save_adapter(root / "head", made["bert"])
    return made


@pytest.mark.parametrize("kind", ["lora", "dora", "embedding", "lora-bias", "tokens", "ia3", "loha", "head"])
def test_every_saved_name_points_at_a_real_peft_module(zoo: dict[str, Path], kind: str) -> None:
    from peft import PeftModel
    from safetensors import safe_open

    base = "bert" if kind == "head" else "llama"
    model = PeftModel.from_pretrained(A.load_base(zoo[base]), str(zoo[kind]))
    modules = dict(model.named_modules())
    parameters = set(dict(A.load_base(zoo[base]).named_parameters()))
    with safe_open(str(zoo[kind] / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys
    for key in keys:
        name = parse(key)
        if name.family == "other":
            assert name.base_parameter in parameters, key  # a full copy of a real base parameter
            continue
        adapted = modules.get(tensor_names.PREFIX + name.module)
        assert adapted is not None, key
        assert hasattr(adapted, name.role), (key, type(adapted).__name__)
