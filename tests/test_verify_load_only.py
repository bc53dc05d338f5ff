"""verify --load-only against real peft: each verdict beside what the real (non-meta) load computes.

Adapters are made by real peft on tiny real bases (Llama, GPT-2's Conv1D, an adapted embedding, a BERT
classifier saved through modules_to_save), then altered as users' files are found altered. For every
broken case the real load is shown once: peft's warning or error, and the logits against the base's and
against the intended adapter's, so that load-only's verdict is what the model computes. Old releases run side
by side (tests/in_release.py): peft 0.9.0 + transformers 4.38.2 and peft 0.6.2 + 4.35.2 load through
tests/era/load_only.py; MoE and Llava adapters are trained by peft 0.18.1 + transformers 4.57.6
(tests/era/lora_of_era.py) and loaded by the installed peft + transformers 5.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft", reason="verify needs the verify extra (torch, transformers, peft)")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from peftdoctor.cli.app import run as cli  # noqa: E402
from peftdoctor.errors import UnusableInput  # noqa: E402
from peftdoctor.verification import render_text, verify  # noqa: E402
from peftdoctor.verification.command import verify_command  # noqa: E402
from peftdoctor.verification.load_only import load_only  # noqa: E402
from tests import adapters as A  # noqa: E402

LLAMA_MODULES = [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]
GPT2_MODULES = [f"transformer.h.{i}.attn.c_attn" for i in (0, 1)]
IDS = [[1, 5, 9, 14, 20, 33, 2]]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("load-only")
    llama, gpt2 = A.make_llama_base(root / "llama"), A.make_gpt2_base(root / "gpt2")
    bert = A.make_bert_classifier_base(root / "bert")
    return {"llama": llama, "gpt2": gpt2, "bert": bert,
            "llama-lora": A.make_lora_adapter(root / "llama-lora", llama),
            "gpt2-lora": A.make_lora_adapter(root / "gpt2-lora", gpt2),
            "llama-embedding": A.make_lora_adapter(root / "llama-embedding", llama,
                                                   target_modules=["embed_tokens", "q_proj", "v_proj"]),
            "bert-head": A.make_modules_to_save_adapter(root / "bert-head", bert),
            "llama-dora": A.make_dora_adapter(root / "llama-dora", llama),
            "llama-ia3": A.make_ia3_adapter(root / "llama-ia3", llama),
            "llama-loha": A.make_loha_adapter(root / "llama-loha", llama),
            "llama-prompt": A.make_prompt_tuning_adapter(root / "llama-prompt", llama)}


def saved_keys(adapter: Path) -> list[str]:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return sorted(f.keys())


def real_logits(base: Path, adapter: Path | None) -> tuple[Any, list[str]]:
    """(logits, peft's warnings) of the base loaded for real with its weights, with the adapter attached by
    PeftModel.from_pretrained as a deployment would (no adapter: the base alone)."""
    import torch
    from peft import PeftModel

    model = A.load_base(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(IDS)).logits
    return logits, [str(w.message) for w in caught]


@pytest.mark.parametrize("name,family,modules", [
    ("llama-lora", "llama", LLAMA_MODULES),
    ("gpt2-lora", "gpt2", GPT2_MODULES),  # Conv1D (fan_in_fan_out)
    ("llama-embedding", "llama", ["model.embed_tokens", *LLAMA_MODULES]),  # lora_embedding_A/B
    ("bert-head", "bert", ["classifier", *[f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1)
                                           for m in ("query", "value")]]),  # modules_to_save's key map
    ("llama-dora", "llama", LLAMA_MODULES),  # lora_magnitude_vector
    ("llama-ia3", "llama", [f"model.layers.{i}.{m}" for i in (0, 1)
                            for m in ("mlp.down_proj", "self_attn.k_proj", "self_attn.v_proj")]),
    ("llama-loha", "llama", LLAMA_MODULES),
    ("llama-prompt", "llama", []),  # prompt_embeddings: loaded by the prompt encoder, not a module
])
def test_clean_adapter_applies_whole(made: dict[str, Path], name: str, family: str, modules: list[str]) -> None:
    result = load_only(str(made[name]), str(made[family]))
    assert result.verdict == "applies", result
    assert result.applied == tuple(saved_keys(made[name])) and result.share == 1.0
    assert (result.unexpected, result.missing, result.unadapted, result.warnings) == ((), (), (), ())
    assert result.adapted_modules == tuple(sorted(modules))
    assert result.peft and result.transformers and result.error is None


def test_a_pickled_adapter_is_loaded_by_peft_and_named(made: dict[str, Path], tmp_path: Path) -> None:
    import torch

    adapter = A.edited_copy(made["llama-lora"], tmp_path / "pickled", {})
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), str(adapter / "adapter_model.bin"))
    (adapter / "adapter_model.safetensors").unlink()
    report = verify(str(adapter), base=str(made["llama"]), load_only=True)
    assert report.verdict == "applies" and report.load is not None and len(report.load.applied) == 8
    assert [f.code for f in report.findings] == ["PD203"]


def test_a_vocabulary_resized_in_training_is_resized_on_meta_too(made: dict[str, Path], tmp_path: Path) -> None:
    """Tokens added in training: the saved embedding and LM head have 102 rows, the base 100. verify resizes the
    base as the training script did (PD309); so does load-only, on the meta device. peft saves each such copy
    twice (`X.weight` and `X.modules_to_save.weight`, equal) and loads the first: the second is named a copy."""
    import torch
    from peft import PeftModel

    A.make_added_tokens_adapter(tmp_path / "adapter", made["llama"])
    report = verify(str(tmp_path / "adapter"), base=str(made["llama"]), load_only=True)
    assert report.verdict == "applies" and [f.code for f in report.findings] == ["PD309"], render_text(report)
    assert report.load is not None and {"model.embed_tokens", "lm_head"} <= set(report.load.adapted_modules)
    assert report.load.copies == ("base_model.model.lm_head.modules_to_save.weight",
                                  "base_model.model.model.embed_tokens.modules_to_save.weight")
    assert report.load.unexpected == () and report.load.share == 1.0
    # What real peft does: the trained rows land in the copy peft computes with, from `X.weight`.
    real = A.load_base(made["llama"])
    real.resize_token_embeddings(102)
    params = dict(PeftModel.from_pretrained(real, str(tmp_path / "adapter")).named_parameters())
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    for module in ("lm_head", "model.embed_tokens"):
        assert torch.equal(params[f"base_model.model.{module}.modules_to_save.default.weight"],
                           saved[f"base_model.model.{module}.modules_to_save.weight"])


# Each rename turns a real adapter into one a user really has; peft loads it with only a warning.
BROKEN = {
    "prefix missing": lambda k: k.removeprefix("base_model.model."),
    "prefix doubled": lambda k: "base_model.model." + k,
    # OPT's module paths against a Llama base: same q_proj/v_proj names, so target_modules still match.
    "OPT paths": lambda k: k.replace("model.layers.", "model.decoder.layers."),
}


@pytest.mark.parametrize("name,family,broken,modules", [
    ("llama-lora", "llama", "prefix missing", LLAMA_MODULES),
    ("llama-lora", "llama", "prefix doubled", LLAMA_MODULES),
    ("llama-lora", "llama", "OPT paths", LLAMA_MODULES),
    ("gpt2-lora", "gpt2", "prefix missing", GPT2_MODULES),
    ("llama-embedding", "llama", "prefix doubled", ["model.embed_tokens", *LLAMA_MODULES]),
])
def test_keys_that_go_nowhere_leave_the_base(made: dict[str, Path], tmp_path: Path, name: str, family: str,
                                             broken: str, modules: list[str]) -> None:
    adapter = A.renamed_copy(made[name], tmp_path / "broken", BROKEN[broken])
    # What real peft does: loads it, warns, and computes the base, not the trained adapter.
    base, _ = real_logits(made[family], None)
    loaded, said = real_logits(made[family], adapter)
    intended, _ = real_logits(made[family], made[name])
    assert any(w.startswith("Found missing adapter keys") for w in said), said
    assert (loaded == base).all() and not (loaded == intended).all()

    result = load_only(str(adapter), str(made[family]))
    assert result.verdict == "base-only" and result.applied == () and result.share == 0.0
    assert result.unexpected == tuple(saved_keys(adapter))
    assert result.unadapted_modules == tuple(sorted(modules)) and result.adapted_modules == ()
    assert {u.computes for u in result.unadapted} == {"base"}
    assert all(k.startswith("base_model.model.") and ".default" in k for k in result.missing)
    assert result.warnings and result.warnings[0].startswith("Found missing adapter keys")


def test_an_empty_weights_file_leaves_every_module_at_the_base(made: dict[str, Path], tmp_path: Path) -> None:
    """alpaca-lora's "adapter_model.bin ... only 443 bytes" (https://github.com/tloen/alpaca-lora/issues/293: "the
    adapter_mode.bin never updated at the end of the training and instead I have a 443 byte file"): a state_dict
    patched to return nothing saved an empty dict. peft loads it with a warning and computes the base."""
    import torch

    adapter = A.edited_copy(made["llama-lora"], tmp_path / "empty", {})
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({}, str(adapter / "adapter_model.bin"))
    base, _ = real_logits(made["llama"], None)
    loaded, said = real_logits(made["llama"], adapter)
    assert any(w.startswith("Found missing adapter keys") for w in said) and torch.equal(loaded, base)
    result = load_only(str(adapter), str(made["llama"]))
    assert (result.verdict, result.applied, result.unexpected, result.share) == ("base-only", (), (), 0.0)
    assert result.unadapted_modules == tuple(LLAMA_MODULES) and len(result.missing) == 8


def test_target_without_weights_under_init_false_is_random(made: dict[str, Path], tmp_path: Path) -> None:
    intended = A.make_lora_adapter(tmp_path / "intended", made["llama"], init_lora_weights=False)
    adapter = A.renamed_copy(intended, tmp_path / "no-v", lambda k: None if ".v_proj." in k else k)
    base, _ = real_logits(made["llama"], None)
    first, said = real_logits(made["llama"], adapter)
    second, _ = real_logits(made["llama"], adapter)
    wanted, _ = real_logits(made["llama"], intended)
    assert any(w.startswith("Found missing adapter keys") for w in said), said
    # v_proj gets fresh random LoRA weights on every load: neither the adapter nor the base, nor reproducible.
    assert not (first == wanted).all() and not (first == base).all() and not (first == second).all()

    result = load_only(str(adapter), str(made["llama"]))
    assert result.verdict == "partial" and result.share == 1.0 and result.unexpected == ()
    assert result.adapted_modules == ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj")
    assert [(u.module, u.computes, u.missing) for u in result.unadapted] == [
        (m, "random", ("lora_A", "lora_B")) for m in LLAMA_MODULES if m.endswith("v_proj")]


def test_a_module_with_half_its_weights_is_partly_loaded(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = A.renamed_copy(made["llama-lora"], tmp_path / "no-B", lambda k: None if "0.self_attn.q_proj.lora_B" in k
                        else k)
    loaded, said = real_logits(made["llama"], adapter)
    intended, _ = real_logits(made["llama"], made["llama-lora"])
    assert any(w.startswith("Found missing adapter keys") for w in said) and not (loaded == intended).all()
    result = load_only(str(adapter), str(made["llama"]))
    assert result.verdict == "partial"
    assert [(u.module, u.computes, u.missing) for u in result.unadapted] == [
        ("model.layers.0.self_attn.q_proj", "partly loaded", ("lora_B",))]
    assert result.missing == ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight",)


@pytest.mark.parametrize("case", ["rank", "head"])
def test_what_peft_refuses_fails_with_its_own_text(made: dict[str, Path], tmp_path: Path, case: str) -> None:
    import torch  # noqa: F401  (peft's exception types come with it)

    if case == "rank":  # r says 8, the saved matrices have rank 4
        adapter, family = A.edited_copy(made["llama-lora"], tmp_path / "r8", {"r": 8}), "llama"
    else:  # modules_to_save names the head, the file lacks it
        adapter, family = A.renamed_copy(made["bert-head"], tmp_path / "no-head",
                                    lambda k: None if "classifier" in k else k), "bert"
    with pytest.raises(Exception) as real:
        real_logits(made[family], adapter)
    result = load_only(str(adapter), str(made[family]))
    assert result.verdict == "fails" and result.applied == ()
    assert result.error is not None and result.error.startswith(type(real.value).__name__)
    assert str(real.value).splitlines()[0].strip()[:60] in result.error


def test_verify_load_only_report_and_exit_codes(made: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    adapter = A.renamed_copy(made["llama-lora"], tmp_path / "np", BROKEN["prefix missing"])
    report = verify(str(adapter), base=str(made["llama"]), load_only=True)
    assert report.verdict == "base-only" and report.load is not None and report.device == "meta"
    assert [(s.name, s.status) for s in report.steps] == [("resolve base", "ok"), ("build base", "ok"),
                                                          ("load adapter", "ok")]
    text = render_text(report)
    assert "0 of 8 saved tensors applied (0%)" in text and "verdict: base-only" in text
    assert "no weights loaded: model.layers.0.self_attn.q_proj (lora_A, lora_B): computes the base" in text

    assert cli(["verify", str(adapter), "--base", str(made["llama"]), "--load-only", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "base-only" and data["load"]["unexpected"] == saved_keys(adapter)
    assert data["load"]["unadapted"][0] == {"module": LLAMA_MODULES[0], "computes": "base",
                                           "missing": ["lora_A", "lora_B"]}
    assert verify_command(str(made["llama-lora"]), None, "auto", "auto", None, "json", None, False,
                          load_only=True) == 0  # its own base, from base_model_name_or_path
    assert json.loads(capsys.readouterr().out)["load"]["share_applied"] == 1.0
    rank = A.edited_copy(made["llama-lora"], tmp_path / "r8", {"r": 8})
    assert cli(["verify", str(rank), "--load-only"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] load adapter" in out and "PD301" in out and "verdict: fails" in out
    assert cli(["verify", str(adapter), "--load-only", "--out", str(tmp_path / "m")]) == 2
    with pytest.raises(UnusableInput):
        load_only(str(tmp_path))
    import peftdoctor

    assert peftdoctor.load_only is load_only  # the top-level API, imported on first use


def test_a_seven_billion_parameter_base_without_weights_loads_in_seconds(tmp_path: Path) -> None:
    """A Llama-2-7B-sized config.json and no weight file at all: nothing is read or allocated. Run in this
    process (importing torch again would cost more than the load): peak RSS may only grow by less than 1 GiB
    (float32 weights would be 27 GB)."""
    import resource
    import time

    import torch
    from peft import LoraConfig
    from transformers import LlamaConfig

    base = tmp_path / "llama-7b"
    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32).save_pretrained(str(base))
    adapter = tmp_path / "adapter"
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(str(adapter))
    generator = torch.Generator().manual_seed(0)
    tensors = {f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight":
               torch.randn((8, 4096) if ab == "A" else (4096, 8), generator=generator)
               for i in range(32) for m in ("q_proj", "v_proj") for ab in "AB"}
    save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    assert sorted(p.name for p in base.iterdir()) == ["config.json"]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()  # CPU time of this process: load elsewhere does not count
    report = verify(str(adapter), load_only=True)  # the base from base_model_name_or_path
    seconds = time.process_time() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert report.verdict == "applies" and report.load is not None and report.load.share == 1.0, render_text(report)
    assert len(report.load.adapted_modules) == 64
    declared = int(report.steps[1].detail.split(" on the meta device, ")[1].split(" ")[0].replace(",", ""))
    assert declared > 6_700_000_000
    # Measured on the 2-core machine shared with 7 others: 1.3 s (0.1 s building the base, 0.4 s peft's load).
    assert seconds < 20, seconds
    assert grown_kib < 2**20, grown_kib


# Keys every release since 0.3 accepts: an adapter saved by today's peft, as a user of an old one trims it.
PORTABLE = ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "fan_in_fan_out",
            "inference_mode", "base_model_name_or_path", "modules_to_save")


@pytest.fixture(scope="module")
def portable(made: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Llama adapter with only the keys old releases accept: as saved, without the prefix, and with
    target_modules "all-linear" (introduced in peft 0.8.0; today's peft saves the resolved names instead)."""
    root = tmp_path_factory.mktemp("portable")
    config = json.loads((made["llama-lora"] / "adapter_config.json").read_text())
    trim = {k: ... for k in config if k not in PORTABLE}
    clean = A.edited_copy(made["llama-lora"], root / "clean", trim)
    return {"clean": clean, "no-prefix": A.renamed_copy(clean, root / "no-prefix", BROKEN["prefix missing"]),
            "all-linear": A.edited_copy(made["llama-lora"], root / "all-linear",
                                        dict(trim, target_modules="all-linear"))}


def test_an_old_peft_and_transformers_apply_the_same(made: dict[str, Path], portable: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """peft 0.9.0 with transformers 4.38.2 (side by side), whose from_pretrained has no low_cpu_mem_usage and
    no missing-keys warning: it loads the prefix-less adapter in silence and computes the base; load-only says so."""
    import torch
    from tests.in_release import answer_of

    clean, broken = portable["clean"], portable["no-prefix"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(made["llama"]), "input_ids": IDS,
                                "jobs": [["clean", str(clean), None], ["no-prefix", str(broken), None]]}))
    real = answer_of("0.9.0", "lora_logits.py", str(spec))
    assert (real["peft"], real["transformers"][:4]) == ("0.9.0", "4.38")
    logits = {name: torch.tensor(job["logits"]) for name, job in real["jobs"].items()}
    assert torch.equal(logits["no-prefix"], torch.tensor(real["base"]))
    assert not torch.equal(logits["clean"], torch.tensor(real["base"]))

    answers = answer_of("0.9.0", "load_only.py", str(made["llama"]), *map(str, portable.values()))
    assert answers[str(clean)]["verdict"] == "applies" and answers[str(clean)]["peft"] == "0.9.0"
    assert answers[str(clean)]["applied"] == saved_keys(clean)
    lost = answers[str(broken)]
    assert lost["verdict"] == "base-only" and lost["warnings"] == [] and lost["unexpected"] == saved_keys(broken)
    assert [u["module"] for u in lost["unadapted"]] == LLAMA_MODULES
    # "all-linear" names every linear layer but lm_head: the saved q_proj/v_proj weights apply, the rest of
    # the modules it targets get none (zero lora_B: they compute the base).
    every = answers[str(portable["all-linear"])]
    assert every["verdict"] == "partial" and every["applied"] == saved_keys(clean) and every["unexpected"] == []
    assert every["adapted_modules"] == LLAMA_MODULES
    assert {u["computes"] for u in every["unadapted"]} == {"base"} and len(every["unadapted"]) == 2 * 5


def test_peft_0_6_2_refuses_all_linear_with_its_own_text(made: dict[str, Path], portable: dict[str, Path]) -> None:
    from tests.in_release import answer_of

    answers = answer_of("0.6.2", "load_only.py", str(made["llama"]), str(portable["clean"]),
                        str(portable["all-linear"]))
    assert answers[str(portable["clean"])]["verdict"] == "applies"
    refused = answers[str(portable["all-linear"])]
    assert (refused["verdict"], refused["peft"], refused["transformers"]) == ("fails", "0.6.2", "4.35.2")
    assert refused["error"] == ("ValueError: Target modules all-linear not found in the base model. Please check "
                                "the target modules and try again.")


MOE_SIZES = dict(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 max_position_embeddings=64, num_experts_per_tok=2)
TINY_TEXT = dict(model_type="llama", vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
TINY_VISION = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
# kind: (config class, model class, config kwargs, target_modules), built alike under both transformers.
ERA_MODELS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(MOE_SIZES, intermediate_size=32, num_local_experts=4),
                ["q_proj", "w1", "w2", "w3"]),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(MOE_SIZES, intermediate_size=32, moe_intermediate_size=8, shared_expert_intermediate_size=32,
                       num_experts=4), ["q_proj", "gate_proj", "up_proj", "down_proj"]),
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration",
              dict(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_index=99), ["q_proj", "v_proj"]),
}


@pytest.fixture(scope="module")
def era4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{kind: (adapter, base)}: the adapter saved by peft 0.18.1 + transformers 4.57.6 (one process for all),
    the base the same config saved by the installed transformers."""
    import torch
    import transformers
    from tests.in_release import answer_of

    root = tmp_path_factory.mktemp("era4")
    answer_of("0.18.1", "lora_of_era.py", json.dumps([[*spec, str(root / kind)] for kind, spec in ERA_MODELS.items()]))
    made = {}
    for kind, (config_class, model_class, config, _) in ERA_MODELS.items():
        torch.manual_seed(0)
        getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).save_pretrained(
            str(root / f"{kind}-base"))
        made[kind] = (root / kind, root / f"{kind}-base")
    return made


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_moe_lora_trained_under_transformers_4_loaded_under_5(era4: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                             kind: str) -> None:
    """LoRA on every expert, trained with peft 0.18.1 + transformers 4.57.6 (one nn.Linear per expert), loaded by
    the installed peft + transformers 5 (experts fused into 3-d parameters). peft converts Mixtral's expert keys
    into target_parameters LoRA; Qwen2-MoE's routed experts go nowhere, and peft says nothing about it."""
    import torch
    import transformers

    adapter, base = era4[kind]
    saved = saved_keys(adapter)
    routed = [k for k in saved if ".experts." in k]
    assert len(routed) == 2 * 4 * 3 * 2  # layers x experts x projections x (A, B), in transformers 4.x names
    without_routed = A.renamed_copy(adapter, tmp_path / "no-routed", lambda k: None if ".experts." in k else k)

    def logits(adapter_dir: Path | None) -> tuple[Any, list[str]]:
        import peft

        model = transformers.AutoModelForCausalLM.from_pretrained(str(base)).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if adapter_dir is not None:
                model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        with torch.no_grad():
            return model(input_ids=torch.tensor(IDS)).logits, [str(w.message) for w in caught]

    plain, _ = logits(None)
    full, said = logits(adapter)
    partial, _ = logits(without_routed)
    assert not any("missing adapter keys" in w for w in said), said
    assert not torch.equal(full, plain)
    result = load_only(str(adapter), str(base))
    assert result.unadapted == () and result.missing == ()
    if kind == "mixtral":  # the routed experts change the output: they are applied, through peft's conversion
        assert not torch.allclose(full, partial)
        assert result.verdict == "applies" and result.applied == tuple(saved) and result.unexpected == ()
        assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"} <= set(
            result.adapted_modules)
    else:  # the adapter computes exactly what it computes without its routed experts
        assert torch.equal(full, partial)
        assert result.verdict == "partial" and result.unexpected == tuple(routed)
        assert result.applied == tuple(k for k in saved if k not in routed)
        assert result.share == pytest.approx(1 - len(routed) / len(saved))


def test_a_config_declaring_a_billion_layers_is_refused_in_one_line(made: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Building the module tree costs time per layer even on the meta device: a hostile count ends at once."""
    import time

    base = tmp_path / "deep"
    base.mkdir()
    config = json.loads((made["llama"] / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=10**9)))
    start = time.process_time()  # CPU time of this process: load elsewhere does not count
    assert cli(["verify", str(made["llama-lora"]), "--base", str(base), "--load-only"]) == 2
    assert time.process_time() - start < 5
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress lines: one line, no traceback
    assert "config.json declares 1,000,000,000 layers" in last and "Traceback" not in err, err


def test_llava_vision_tower_lora_trained_under_transformers_4_loaded_under_5(
        era4: dict[str, tuple[Path, Path]]) -> None:
    """transformers 5 dropped the `vision_model.` level of Llava's CLIP vision tower; the installed peft renames
    the saved keys to the new tree, so every tensor lands (shown by value in the real load) and none is lost."""
    import transformers
    from peft import PeftModel

    adapter, base = era4["llava"]
    saved = saved_keys(adapter)
    vision = [k for k in saved if ".vision_tower.vision_model." in k]
    assert len(vision) == 2 * 2 * 2  # layers x (q_proj, v_proj) x (A, B), under transformers 4.x names
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(base))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(model, str(adapter))
    assert not any("missing adapter keys" in str(w.message) for w in caught)
    params = dict(model.named_parameters())
    file = load_file(str(adapter / "adapter_model.safetensors"))
    for key in vision:
        landed = key.replace(".vision_model.", ".").replace(".weight", ".default.weight")
        assert (params[landed] == file[key]).all(), key

    result = load_only(str(adapter), str(base))
    assert (result.verdict, result.base_class) == ("applies", "LlavaForConditionalGeneration")
    assert result.applied == tuple(saved) and result.unexpected == () and result.unadapted == ()
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj" in result.adapted_modules
