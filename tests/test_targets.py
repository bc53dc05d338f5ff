"""Deployment targets (PD4xx): every engine-table entry against a real peft adapter that uses the
feature and one that does not, judged at a release inside the entry's range."""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import pytest
from adapters import (
    edited_copy,
    make_dora_adapter,
    make_gpt2_base,
    make_ia3_adapter,
    make_llama_base,
    make_lora_adapter,
    make_pattern_lora_adapter,
    make_rslora_adapter,
    renamed_copy,
)
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from peftdoctor import check
from peftdoctor.engines import (
    BEHAVIOURS,
    ENGINES,
    REWRITES,
    Entry,
    Target,
    applicable,
    load_table,
    parse_target,
    refusals_for,
    rewrites_for,
)
from peftdoctor.engines.features import DETECTORS, FEATURE_CODES
from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.rules.registry import RULES


def _llava_base(directory: Path) -> Path:
    """A tiny Llava (CLIP vision tower + Llama text model), saved in today's transformers layout."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=8, patch_size=4),
        text_config=LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2), image_token_index=3)
    LlavaForConditionalGeneration(config).save_pretrained(str(directory))
    return directory


def _save_on(model_cls_name: str, directory: Path, base: Path, **lora: object) -> Path:
    """Real peft adapter on a base loaded with another class than tests/adapters.py would use."""
    import transformers
    from peft import LoraConfig, get_peft_model

    model = getattr(transformers, model_cls_name).from_pretrained(str(base))
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora)).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("targets")
    llama, gpt2 = make_llama_base(root / "llama"), make_gpt2_base(root / "gpt2")
    builders: dict[str, Callable[[Path], Path]] = {
        "plain": lambda d: make_lora_adapter(d, llama),
        "ia3": lambda d: make_ia3_adapter(d, llama),
        "rslora": lambda d: make_rslora_adapter(d, llama),
        "dora": lambda d: make_dora_adapter(d, llama),
        "modules_to_save": lambda d: make_lora_adapter(d, llama, modules_to_save=["lm_head"]),
        "lora_bias": lambda d: make_lora_adapter(d, llama, lora_bias=True),
        "bias": lambda d: make_lora_adapter(d, llama, bias="lora_only"),
        "rank32": lambda d: make_lora_adapter(d, llama, r=32),
        "rank600": lambda d: make_lora_adapter(d, llama, r=600),
        "pattern": lambda d: make_pattern_lora_adapter(d, llama),
        "embedding": lambda d: make_lora_adapter(d, llama, target_modules=["q_proj", "v_proj", "embed_tokens"]),
        "lm_head": lambda d: make_lora_adapter(d, llama, target_modules=["q_proj", "v_proj", "lm_head"]),
        "tokens": lambda d: make_lora_adapter(d, llama, trainable_token_indices=[5, 6]),
        "pissa": lambda d: make_lora_adapter(d, llama, init_lora_weights="pissa"),
        "gpt2": lambda d: make_lora_adapter(d, gpt2),
        "llava": lambda d: _save_on("LlavaForConditionalGeneration", d, _llava_base(root / "llava"),
                                    target_modules=["q_proj", "v_proj"]),
        "score": lambda d: _save_on("LlamaForSequenceClassification", d, llama,
                                    target_modules=["q_proj", "v_proj", "score"]),
    }
    built = {name: build(root / name) for name, build in builders.items()}
    for key, value in REFUSED_KEY_VALUES.items():  # config-only features: the engine reads nothing else of them
        built[f"refused:{key}"] = _with_config(built["plain"], root / key, {key: value})
    return built


# A set value for each key an engine refuses outright (feature "refused_key", params key).
REFUSED_KEY_VALUES = {"layer_replication": [[0, 1], [1, 2]], "alora_invocation_tokens": [5, 6],
                      "use_qalora": True, "use_bdlora": {"nblocks": 2}}


def _with_config(source: Path, directory: Path, keys: dict[str, object]) -> Path:
    """A copy of the adapter at `source` whose adapter_config.json also sets `keys`."""
    shutil.copytree(source, directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**config, **keys}))
    return directory


# Which adapter of the zoo uses each feature (and, for "any_adapter", every adapter does).
TRIGGER = {
    "any_adapter": "plain", "not_lora": "ia3", "rslora": "rslora", "dora": "dora",
    "modules_to_save": "modules_to_save", "modules_to_save_non_head": "modules_to_save", "lora_bias": "lora_bias",
    "bias": "bias", "rank_above_default": "rank32", "rank_above_max": "rank600", "rank_pattern": "pattern",
    "embedding_lora": "embedding", "lm_head_lora": "lm_head", "trainable_tokens": "tokens",
    "base_mutating_init": "pissa", "vlm_new_key_layout": "llava", "keys_outside_decoder_layers": "gpt2",
    "some_keys_outside_decoder_layers": "score", "target_modules_unsupported": "gpt2",
    "architecture_modules_unsupported": "score", "rank_above_server_limit": "rank32",
}
# Features judged only against a server flag the user names (SGLang has no default rank limit): the flag given.
LIMIT = {"rank_above_server_limit": 16}


def _trigger(entry: Entry) -> str:
    return f"refused:{dict(entry.params)['key']}" if entry.feature == "refused_key" else TRIGGER[entry.feature]


ALL_ENTRIES = [(engine, entry) for engine in ENGINES for entry in load_table(engine).entries]


def _release_in(engine: str, entry: Entry) -> Version:
    inside = [v for v in load_table(engine).checked if entry.releases.contains(v, prereleases=True)]
    assert inside, f"{entry.id}: no checked release lies in {entry.releases}"
    return min(inside)


def _ids(engine: str, version: Version, adapter_dir: Path, max_lora_rank: Optional[int] = None) -> str:
    """Through check itself: the base is what check finds (base_model_name_or_path, here a local directory)."""
    report = check(str(adapter_dir), serve=f"{engine}=={version}", max_lora_rank=max_lora_rank)
    return " ".join(f"{f.code} {f.message}" for f in report.findings if f.code.startswith("PD4"))


@pytest.mark.parametrize("engine,entry", ALL_ENTRIES, ids=[e.id for _, e in ALL_ENTRIES])
def test_entry_triggers(zoo: dict[str, Path], engine: str, entry: Entry) -> None:
    seen = _ids(engine, _release_in(engine, entry), zoo[_trigger(entry)], LIMIT.get(entry.feature))
    if entry.behaviour == "ok":  # supported: the adapter using it gets no finding for it
        assert f"[{entry.id}]" not in seen
    else:
        assert f"{FEATURE_CODES[entry.feature]} " in seen and f"[{entry.id}]" in seen, seen


@pytest.mark.parametrize("engine,entry", ALL_ENTRIES, ids=[e.id for _, e in ALL_ENTRIES])
def test_entry_not_triggered(zoo: dict[str, Path], engine: str, entry: Entry) -> None:
    version = _release_in(engine, entry)
    if entry.feature == "any_adapter":  # every adapter has it: a release with LoRA support is the negative
        version = load_table(engine).newest
    assert f"[{entry.id}]" not in _ids(engine, version, zoo["plain"])


@pytest.mark.parametrize("engine", ENGINES)
def test_table_is_valid(engine: str) -> None:
    raw = json.loads(resources.files("peftdoctor.engines").joinpath(f"{engine}.json").read_text())
    ids = [e["id"] for e in raw["entries"]]
    assert len(ids) == len(set(ids))
    for e in raw["entries"]:
        SpecifierSet(e["releases"])  # raises on a bad range
        assert e["feature"] in DETECTORS and e["behaviour"] in BEHAVIOURS, e["id"]
        assert e["source"].strip() and e["message"].strip(), e["id"]
        assert e["behaviour"] == "ok" or e["fix"].strip(), e["id"]
        assert e.get("rewrite") in (None, *REWRITES), e["id"]
        assert FEATURE_CODES[e["feature"]] in RULES


def test_ranges_of_one_feature_do_not_overlap() -> None:
    for engine in ENGINES:
        table = load_table(engine)
        for version in table.checked:
            features = [(e.feature, dict(e.params).get("key")) for e in table.entries
                        if e.releases.contains(version, prereleases=True)]
            assert len(features) == len(set(features)), (engine, version)


@pytest.mark.parametrize("text,expected", [("vllm", Target("vllm", None)), ("vllm==0.6.3", Target("vllm", Version("0.6.3"))),
                                           ("SGLang", Target("sglang", None)), ("tgi==v3.0.2", Target("tgi", Version("3.0.2")))])
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["", "ollama", "vllm==banana", "vllm>=0.6", "vllm==0.6.3==1"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(UnusableInput):
        parse_target(text)


def test_rewrites_fold_rslora_only_where_the_engine_ignores_or_refuses_it(zoo: dict[str, Path]) -> None:
    config = open_adapter(str(zoo["rslora"])).config
    assert rewrites_for(parse_target("vllm==0.6.3"), config) == {"fold_rslora"}
    assert rewrites_for(parse_target("vllm==0.6.5"), config) == {"fold_rslora"}
    assert rewrites_for(parse_target("vllm==0.7.0"), config) == set()
    assert rewrites_for(parse_target("sglang"), config) == {"fold_rslora"}
    assert rewrites_for(parse_target("tgi"), config) == set()
    assert refusals_for(parse_target("sglang"), config) == []


def test_no_fold_where_patterns_are_ignored(zoo: dict[str, Path]) -> None:
    config = dict(open_adapter(str(zoo["pattern"])).config, use_rslora=True)
    assert rewrites_for(parse_target("sglang"), config) == set()
    assert any(key == "use_rslora" for key, _ in refusals_for(parse_target("sglang"), config))


def test_refusals_leave_server_flags_to_the_user(zoo: dict[str, Path]) -> None:
    assert refusals_for(parse_target("vllm"), open_adapter(str(zoo["rank32"])).config) == []
    assert [k for k, _ in refusals_for(parse_target("vllm"), open_adapter(str(zoo["dora"])).config)] == ["use_dora"]


def test_rank_finding_names_the_flag(zoo: dict[str, Path]) -> None:
    seen = _ids("vllm", Version("0.7.0"), zoo["rank32"])
    assert "--max-lora-rank 32" in seen


def _hub_id_copy(adapter_dir: Path, destination: Path) -> Path:
    """A copy of a real adapter whose base_model_name_or_path is a hub id (the base's architecture unknown)."""
    return edited_copy(adapter_dir, destination, {"base_model_name_or_path": "some-org/some-model"})


def _phi3_adapter(directory: Path, root: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    base = root / "phi3"
    Phi3ForCausalLM(Phi3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).save_pretrained(str(base))
    model = Phi3ForCausalLM.from_pretrained(str(base))
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj"])
                   ).save_pretrained(str(directory))
    return directory


def test_architecture_modules_phi3(zoo: dict[str, Path], tmp_path: Path) -> None:
    phi3 = _phi3_adapter(tmp_path / "phi3-lora", tmp_path)
    # Served by LlamaForCausalLM until 0.6.1: fused qkv_proj/gate_up_proj are refused; Phi3's own class from 0.6.2.
    assert "[vllm-arch-modules-refused-b]" in _ids("vllm", Version("0.5.4"), phi3)
    assert "PD416" not in _ids("vllm", Version("0.6.3"), phi3)
    assert "PD416" not in _ids("vllm", Version("0.33.0"), phi3)
    # A hub id base: the fingerprint qkv_proj+gate_up_proj names Phi-3; plain q_proj/v_proj name nothing.
    hub = _hub_id_copy(phi3, tmp_path / "phi3-hub")
    assert "Phi3ForCausalLM (from the module names" in _ids("vllm", Version("0.5.4"), hub)
    assert "PD416" not in _ids("vllm", Version("0.5.4"), _hub_id_copy(zoo["score"], tmp_path / "score-hub"))


def test_architecture_modules_gpt2_and_unknown_bases(zoo: dict[str, Path], tmp_path: Path) -> None:
    seen = _ids("vllm", Version("0.33.0"), zoo["gpt2"])
    assert "[vllm-arch-modules-refused-d]" in seen and "GPT2LMHeadModel (from the base config.json)" in seen
    # Without the base config a GPT-2 adapter is not judged: c_attn is GPT-BigCode's name as well.
    assert "PD416" not in _ids("vllm", Version("0.33.0"), _hub_id_copy(zoo["gpt2"], tmp_path / "gpt2-hub"))
    # --base names the base when base_model_name_or_path cannot: its config.json decides.
    named = check(str(tmp_path / "gpt2-hub"), serve="vllm==0.33.0", base=str(_base_dir(zoo["gpt2"])))
    assert "GPT2LMHeadModel (from the base config.json)" in " ".join(f.message for f in named.findings)
    # Llama lists embed_tokens and lm_head; the embedding-LoRA adapter is fine on it.
    assert "PD416" not in _ids("vllm", Version("0.33.0"), zoo["embedding"])


def _base_dir(adapter_dir: Path) -> Path:
    return Path(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])


def _rekeyed_copy(adapter_dir: Path, destination: Path, old: str, new: str) -> Path:
    """A copy of a real peft adapter whose tensor keys start with `new` instead of `old`: the key
    layouts peft saves for a VLM base (the text model nested under language_model)."""
    def rename(key: str) -> str:
        assert key.startswith(old), key
        return new + key[len(old):]

    return renamed_copy(adapter_dir, destination, rename)


def test_sglang_routes_vlm_key_prefixes_by_layer_index(zoo: dict[str, Path], tmp_path: Path) -> None:
    old = "base_model.model.model.layers."
    new_layout = _rekeyed_copy(zoo["plain"], tmp_path / "new", old, "base_model.model.model.language_model.layers.")
    old_layout = _rekeyed_copy(zoo["plain"], tmp_path / "old", old, "base_model.model.language_model.model.layers.")
    # The new layout is the feature: vLLM before 0.9.2 serves the base for it, SGLang loads it.
    assert "[vllm-vlm-new-layout]" in _ids("vllm", Version("0.9.1"), new_layout)
    assert "[vllm-vlm-new-layout]" not in _ids("vllm", Version("0.9.1"), old_layout)
    sglang = load_table("sglang")
    for version in sglang.checked:
        if version < Version("0.3.1"):
            continue
        assert "sglang-vlm-key-prefix-ok" in [e.id for e in applicable(Target("sglang", version))[2]], version
        for adapter in (new_layout, old_layout, zoo["plain"]):
            assert "PD414" not in _ids("sglang", version, adapter), (version, adapter.name)
    # Both layouts hold decoder-layer keys; only the new one is the tabulated feature.
    entry = next(e for e in sglang.entries if e.id == "sglang-vlm-key-prefix-ok")
    detect = DETECTORS[entry.feature]
    assert detect({}, open_adapter(str(new_layout)).header, {}) is not None
    assert detect({}, open_adapter(str(old_layout)).header, {}) is None
    assert detect({}, open_adapter(str(zoo["plain"])).header, {}) is None
