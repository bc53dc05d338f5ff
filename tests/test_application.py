"""What peft applies of an adapter that loads without an error (issue 19, items 1 and 3).

Each case is first shown with real peft on a tiny real base: the load, peft's "Found missing adapter keys"
warning where the release gives one, and the logits against the base's and the intended adapter's. Then
check must say it (exit 1, an error naming the modules and what they compute) and its compatibility table
must give that release the same verdict; clean adapters stay clean.
"""
from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
from packaging.version import Version

from peftdoctor import check
from peftdoctor.model.findings import Severity
from peftdoctor.ops.explain import explain
from peftdoctor.peft import application, architectures
from tests import in_release
from tests.adapters import edited_copy, load_base, make_gpt2_base, make_llama_base, make_lora_adapter

sys.path.insert(0, str(Path(__file__).resolve().parent / "era"))
import released_source

IDS = [[1, 5, 7, 9, 11, 13]]
MISSING = "Found missing adapter keys while loading the checkpoint"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("applied")
    llama, gpt2 = make_llama_base(root / "llama"), make_gpt2_base(root / "gpt2")
    return {"llama": llama, "gpt2": gpt2,
            "lora-llama": make_lora_adapter(root / "lora-llama", llama, base_model_name_or_path="peftdoctor/tiny"),
            "lora-gpt2": make_lora_adapter(root / "lora-gpt2", gpt2, base_model_name_or_path="peftdoctor/tiny")}


def rekeyed(src: Path, dst: Path, rename: Callable[[str], str], **changes: Any) -> Path:
    """A copy of the adapter whose tensors are saved under other names (and config `changes`)."""
    from safetensors.torch import load_file, save_file

    edited_copy(src, dst, changes)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items()}, str(dst / "adapter_model.safetensors"))
    return dst


def foreign(src: Path, dst: Path, model_type: str, **changes: Any) -> Path:
    """The adapter's LoRA tensors moved to two linear modules of another architecture's layers 0 and 1, paths
    from the generated table (what an adapter trained on that architecture saves)."""
    import torch
    from safetensors.torch import save_file

    modules = architectures.entry(model_type)["modules"]
    # (Falcon's FalconLinear is "other" in the table: an nn.Linear subclass the generator does not name)
    names = [n for n, (kind, dims) in modules.items() if kind in ("Linear", "other") and dims and len(dims) == 2
             and n.count("{i}") == 1][:2]
    tensors = {}
    for name in names:
        for i in (0, 1):
            path = "base_model.model." + name.replace("{i}", str(i))
            tensors[f"{path}.lora_A.weight"] = torch.randn(4, 16)
            tensors[f"{path}.lora_B.weight"] = torch.randn(16, 4)
    edited_copy(src, dst, changes)
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


def loaded(base: Path, adapter: Path) -> tuple[Any, list[str]]:
    """Logits of the base with the adapter loaded by the installed peft, and the warnings it gave."""
    import torch
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(load_base(base), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits, [str(w.message) for w in caught]


def base_logits(base: Path) -> Any:
    import torch

    with torch.no_grad():
        return load_base(base).eval()(input_ids=torch.tensor(IDS)).logits


def verdict(report: Any, peft: str) -> Any:
    return next(c for c in report.compatibility if c.peft == peft)


def errors(report: Any) -> dict[str, str]:
    return {f.code: f.message for f in report.findings if f.severity is Severity.ERROR}


@pytest.mark.parametrize("name", ["lora-llama", "lora-gpt2"])
def test_adapters_saved_by_peft_stay_clean(made: dict[str, Path], name: str) -> None:
    base = made[name.split("-")[1]]
    report = check(str(made[name]), peft="0.21.2", base=str(base))
    assert not errors(report) and not report.fails_at(Severity.WARNING), report.findings
    assert verdict(report, "0.21.2").judged == "ok" and verdict(report, "0.21.2").part is None


@pytest.mark.parametrize("case, rename", [
    ("no-prefix", lambda k: k.removeprefix("base_model.model.")),
    ("doubled-prefix", lambda k: "base_model.model." + k),
    ("adapter-name", lambda k: k.replace(".weight", ".mine.weight")),
])
def test_keys_peft_drops_leave_the_base(made: dict[str, Path], tmp_path: Path, case: str, rename: Any) -> None:
    """peft 0.21.2 loads these, warns about missing keys, and computes the base exactly."""
    import torch

    adapter = rekeyed(made["lora-llama"], tmp_path / case, rename)
    logits, said = loaded(made["llama"], adapter)
    assert torch.equal(logits, base_logits(made["llama"])) and any(MISSING in w for w in said), said

    explained = [e.finding for e in explain("\n".join(said)) if e.finding.code == "PD355"]
    assert explained and "PD223" in explained[0].fix and "PD207" in explained[0].fix  # the findings check gives:
    report = check(str(adapter), peft="0.21.2", base=str(made["llama"]))
    found = errors(report)
    assert application.REASONS[case] in found["PD223"] and "Applied: 0 of 8 LoRA tensors" in found["PD223"]
    assert "model.layers.0.self_attn.q_proj" in found["PD207"] and "compute the base" in found["PD207"]
    assert verdict(report, "0.21.2").judged == "base" and report.fails_at(Severity.ERROR)
    assert not [c for c in report.compatibility if c.judged == "ok"]  # no release applies these keys


def test_lora_a_b_on_an_embedding(made: dict[str, Path], tmp_path: Path) -> None:
    """An embedding's LoRA saved as lora_A/lora_B (another tool's layout): peft reads lora_embedding_A/B there,
    warns that those are missing, and the embedding computes the base while q_proj is applied."""
    saved = make_lora_adapter(tmp_path / "emb", made["llama"], target_modules=["embed_tokens", "q_proj"],
                              base_model_name_or_path="peftdoctor/tiny")
    adapter = rekeyed(saved, tmp_path / "emb-ab", lambda k: k.replace("lora_embedding_", "lora_"))
    _, said = loaded(made["llama"], adapter)
    assert any(MISSING in w and "embed_tokens.lora_embedding_A.default" in w for w in said), said
    report = check(str(adapter), peft="0.21.2", base=str(made["llama"]))
    found = errors(report)
    assert application.REASONS["embedding-role"] in found["PD223"] and "model.embed_tokens" in found["PD207"]
    assert verdict(report, "0.21.2").judged == "partial"


@pytest.mark.parametrize("model_type, base, changes", [
    ("opt", "llama", {}),
    ("bart", "llama", {}),
    ("gpt_neox", "llama", {"target_modules": "all-linear"}),
    ("falcon", "gpt2", {"target_modules": "all-linear"}),
    ("starcoder2", "gpt2", {"target_modules": "all-linear"}),
])
def test_module_paths_of_another_architecture(made: dict[str, Path], tmp_path: Path, model_type: str, base: str,
                                              changes: dict[str, Any]) -> None:
    """An adapter of another architecture whose target_modules also select modules of this base: peft builds
    layers on this base's modules, finds no weights for them and drops the foreign ones, silently but for the
    missing-keys warning; the outputs are the base's."""
    import torch

    adapter = foreign(made[f"lora-{base}"], tmp_path / model_type, model_type, **changes)
    logits, said = loaded(made[base], adapter)
    assert torch.equal(logits, base_logits(made[base])) and any(MISSING in w for w in said), said

    report = check(str(adapter), peft="0.21.2", base=str(made[base]))
    found = errors(report)
    assert application.REASONS["not-in-base"] in found["PD223"], report.findings
    assert "compute the base" in found["PD207"]
    entry = verdict(report, "0.21.2")
    assert (entry.judged, entry.part) == ("base", "base") and "0 of 8 LoRA tensors" in (entry.detail or "")


def test_a_target_without_weights_under_random_init(made: dict[str, Path], tmp_path: Path) -> None:
    """init_lora_weights false: the module without weights gets random LoRA weights, so the outputs differ from
    the intended adapter's (and the base's); with the default init it computes the base there."""
    import torch

    intended, _ = loaded(made["llama"], made["lora-llama"])
    targets = ["k_proj", "q_proj", "v_proj"]
    drawn = edited_copy(made["lora-llama"], tmp_path / "random", {"target_modules": targets,
                                                                 "init_lora_weights": False})
    zero = edited_copy(made["lora-llama"], tmp_path / "zero", {"target_modules": targets})
    random_logits, said = loaded(made["llama"], drawn)
    zero_logits, _ = loaded(made["llama"], zero)
    assert not torch.allclose(random_logits, intended) and any(MISSING in w for w in said), said
    assert torch.equal(zero_logits, intended)  # k_proj's lora_B is zero: it computes the base

    found = errors(report := check(str(drawn), peft="0.21.2", base=str(made["llama"])))
    assert "model.layers.0.self_attn.k_proj" in found["PD207"] and "random" in found["PD207"]
    assert verdict(report, "0.21.2").judged == "random" and "PD223" not in found
    found = errors(report := check(str(zero), peft="0.21.2", base=str(made["llama"])))
    assert "compute the base" in found["PD207"] and verdict(report, "0.21.2").judged == "partial"
    # without the base, the entry itself is named
    assert "random" in errors(check(str(drawn), peft="0.21.2"))["PD207"]


def test_the_family_a_base_name_says_stands_in_for_the_base(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = foreign(made["lora-llama"], tmp_path / "opt", "opt",
                      base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    report = check(str(adapter), peft="0.21.2")
    assert "PD223" in errors(report) and any("model_type 'llama'" in s for s in report.skipped), report.skipped
    for name, family in [("meta-llama/Llama-2-7b-hf", "llama"), ("gpt2-medium", "gpt2"), ("facebook/opt-350m", "opt"),
                         ("microsoft/Phi-3-mini-4k-instruct", "phi3"), ("meta-llama/Llama-3.2-11B-Vision", None),
                         ("Qwen/Qwen2-VL-7B", None), ("peftdoctor/tiny", None), ("/data/llama", None)]:
        assert application.family_of(name) == family, name


def test_the_default_adapter_name_in_keys_loads_from_0_21(made: dict[str, Path], tmp_path: Path) -> None:
    """peft 0.21 maps the model's own keys back and passes others through: `lora_A.default.weight` loads as it is
    (before 0.21.0 it became lora_A.default.default.weight and was dropped: the across-releases test runs it)."""
    import torch

    adapter = rekeyed(made["lora-llama"], tmp_path / "named", lambda k: k.replace(".weight", ".default.weight"))
    logits, said = loaded(made["llama"], adapter)
    assert torch.equal(logits, loaded(made["llama"], made["lora-llama"])[0]) and not any(MISSING in w for w in said)
    report = check(str(adapter), peft="0.21.2", base=str(made["llama"]))
    assert not errors(report) and verdict(report, "0.21.2").judged == "ok"
    before = verdict(report, "0.20.0")
    assert before.judged == "base" and "saved with the adapter name" in (before.detail or "")


def test_all_linear_before_0_8_and_prefixes_across_releases(made: dict[str, Path], tmp_path: Path) -> None:
    """Real 0.6.2 raises on all-linear with that text and drops unprefixed keys without a word; 0.15.0
    warns; both compute the base. check predicts each release so."""
    keep = {"base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode", "lora_alpha", "lora_dropout",
            "modules_to_save", "peft_type", "r", "target_modules", "task_type"}
    config = json.loads((made["lora-llama"] / "adapter_config.json").read_text())
    old = edited_copy(made["lora-llama"], tmp_path / "old", {k: ... for k in config if k not in keep})
    every = edited_copy(old, tmp_path / "all-linear", {"target_modules": "all-linear"})
    bare = rekeyed(old, tmp_path / "bare", lambda k: k.removeprefix("base_model.model."))
    named = rekeyed(old, tmp_path / "named", lambda k: k.replace(".weight", ".default.weight"))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(made["llama"]), "input_ids": IDS,
                                "jobs": {"all-linear": str(every), "bare": str(bare), "named": str(named)}}))
    for release, warns in [("0.6.2", False), ("0.15.0", True)]:
        real = in_release.answer_of(release, "load_applied.py", str(spec))
        report = check(str(bare), peft=release, base=str(made["llama"]))
        assert real["jobs"]["bare"]["logits"] == real["base"]
        assert any(MISSING in w for w in real["jobs"]["bare"]["warnings"]) == warns
        assert application.behaviour(Version(release)).warns_missing == warns
        assert verdict(report, release).judged == "base" and "PD223" in errors(report)
        assert real["jobs"]["named"]["logits"] == real["base"]
        assert verdict(check(str(named), peft=release, base=str(made["llama"])), release).judged == "base"
        predicted = verdict(check(str(every), peft=release, base=str(made["llama"])), release)
        if release == "0.6.2":
            assert real["jobs"]["all-linear"]["error"] == predicted.error == predicted.detail, real["jobs"]
            assert "PD121" in errors(check(str(every), peft=release))
        else:
            assert real["jobs"]["all-linear"]["error"] is None and predicted.judged == "partial"


def test_dora_magnitude_names_before_0_12(made: dict[str, Path], tmp_path: Path) -> None:
    """peft 0.9-0.11 read DoRA's magnitude as `lora_magnitude_vector` only: real 0.9.0 drops the 0.12+ module's
    name `lora_magnitude_vector.weight` without a word (the untrained magnitude computes something else), and
    loads the same tensors under the name save_pretrained writes as 0.21.2 does."""
    import torch

    from tests.adapters import make_dora_adapter

    keep = {"base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode", "lora_alpha", "lora_dropout",
            "modules_to_save", "peft_type", "r", "target_modules", "task_type", "use_dora"}
    saved = make_dora_adapter(tmp_path / "dora", made["llama"], base_model_name_or_path="peftdoctor/tiny")
    config = json.loads((saved / "adapter_config.json").read_text())
    old = edited_copy(saved, tmp_path / "old", {k: ... for k in config if k not in keep})
    # save_pretrained keeps the old name; a state dict of a 0.12+ model (saved by hand) holds the module's
    new = rekeyed(old, tmp_path / "new", lambda k: k + ".weight" if k.endswith("lora_magnitude_vector") else k)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(made["llama"]), "input_ids": IDS,
                                "jobs": {"new": str(new), "old": str(old)}}))
    real = in_release.answer_of("0.9.0", "load_applied.py", str(spec))
    intended = loaded(made["llama"], new)[0]
    assert torch.allclose(torch.tensor(real["jobs"]["old"]["logits"]), intended, atol=1e-5)
    assert not torch.allclose(torch.tensor(real["jobs"]["new"]["logits"]), intended, atol=1e-3)
    assert not any(MISSING in w for w in real["jobs"]["new"]["warnings"])

    report = check(str(new), peft="0.9.0", base=str(made["llama"]))
    assert application.REASONS["dora-name"] in errors(report)["PD223"]
    assert verdict(report, "0.9.0").judged == "partial" and verdict(report, "0.12.0").judged == "ok"
    assert "PD223" not in errors(check(str(old), peft="0.9.0", base=str(made["llama"])))


@pytest.mark.parametrize("before, since, text", [
    ("0.13.2", "0.14.0", MISSING),  # peft_model.py: the missing-keys warning
    ("0.11.1", "0.12.0", "new_dora_suffix"),  # save_and_load.py: DoRA's magnitude read under both names
    ("0.20.0", "0.21.0", "_remap_adapter_state_dict_for_load"),  # the model's own keys mapped back
    ("0.14.0", "0.15.0", "adapter_state_dict_load_map"),  # modules_to_save copies indexed: KeyError when missing
])
def test_release_behaviours_are_read_from_the_wheels(before: str, since: str, text: str) -> None:
    import zipfile

    def holds(version: str) -> bool:
        with zipfile.ZipFile(released_source.wheel(version)) as archive:
            return any(text in archive.read(n).decode("utf-8") for n in
                       ("peft/peft_model.py", "peft/utils/save_and_load.py"))

    assert not holds(before) and holds(since)
    old, new = application.behaviour(Version(before)), application.behaviour(Version(since))
    assert old != new and application.behaviour(Version("0.21.2")).warns_missing


def test_the_text_line_never_says_ok_under_an_error(made: dict[str, Path], tmp_path: Path) -> None:
    """A PD206 rank mismatch fails every release: the line said "ok 0.10.0-0.21.2" under it."""
    from peftdoctor.render.report import render_json, render_text

    report = check(str(edited_copy(made["lora-llama"], tmp_path / "r8", {"r": 8})), peft="0.21.2")
    assert "PD206" in errors(report)
    line = next(text for text in render_text(report).splitlines() if "compatibility:" in text)
    assert " ok " not in line + " " and "fails 0.1.0-0.21.2" in line, line
    entry = json.loads(render_json(report))["compatibility"][-1]
    assert (entry["verdict"], entry["part"], entry["result"]) == ("fails", "weights", "ok")


def test_a_missing_modules_to_save_copy_fails_from_0_15(tmp_path: Path) -> None:
    """peft 0.21.2 raises KeyError on a modules_to_save copy the file lacks (0.14 and older keep the base's)."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    from tests.adapters import make_bert_classifier_base, make_modules_to_save_adapter

    base = make_bert_classifier_base(tmp_path / "bert")
    adapter = make_modules_to_save_adapter(tmp_path / "mts", base, base_model_name_or_path="peftdoctor/tiny")
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if "classifier" not in k}, str(weights))
    with pytest.raises(KeyError, match="classifier"):
        PeftModel.from_pretrained(load_base(base), str(adapter))
    report = check(str(adapter), peft="0.21.2", base=str(base))
    assert "PD209" in errors(report)
    assert (verdict(report, "0.21.2").judged, verdict(report, "0.21.2").part) == ("fails", "weights")
    assert verdict(report, "0.5.0").judged == "partial"


def test_target_parameters_wrappers_apply(tmp_path: Path) -> None:
    """LoRA on MoE expert parameters (target_parameters): two parameters of one module nest ParamWrappers, saved
    under `experts.base_layer.lora_A`; real peft loads every key, and check drops none of them. (Their ranks,
    r x experts, are PD206's to understand: issue 19 item 4.)"""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    MixtralForCausalLM(config).save_pretrained(str(tmp_path / "base"))
    lora = LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM",
                      target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    model = get_peft_model(MixtralForCausalLM.from_pretrained(str(tmp_path / "base")), lora)
    model.save_pretrained(str(tmp_path / "a"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(MixtralForCausalLM.from_pretrained(str(tmp_path / "base")), str(tmp_path / "a"))
    assert not any(MISSING in str(w.message) for w in caught)
    codes = {f.code for f in check(str(tmp_path / "a"), peft="0.21.2", base=str(tmp_path / "base")).findings}
    assert not codes & {"PD223", "PD207", "PD208"}, codes


def test_hostile_layer_counts_stay_bounded(made: dict[str, Path], tmp_path: Path) -> None:
    base = Path(shutil.copytree(made["llama"], tmp_path / "huge"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    report = check(str(made["lora-llama"]), peft="0.21.2", base=str(base))
    assert "PD207" not in errors(report)  # the count is not believed: the saved layers stand for it
