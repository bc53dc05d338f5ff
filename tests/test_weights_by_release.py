"""Config against weights where the answer depends on the peft release: r=0 beside rank-4 weights, and a
modules_to_save entry the weights hold no copy of.

A real LoRA adapter (r=4, on a tiny Llama) is edited the way the outside tester did, and each release loads
it in its own environment (tests/era/lora_logits.py, with the keys the release knows, as a user would edit
them): the release's error, or the logits it computes. check's finding for that release must say the same.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from peftdoctor import check
from peftdoctor.peft import releases, semantics
from tests.in_release import answer_of, version_of

torch = pytest.importorskip("torch")

# 0.3.0 has no r check and loads only adapter_model.bin; 0.13.2 refuses r=0 and keeps the base's
# module for a modules_to_save entry without weights; 0.15.0 is the first to raise KeyError for it.
LOADERS = ["0.3.0", "0.13.2", "0.15.0", "installed"]
INPUT_IDS = [[1, 5, 9, 20, 33, 7, 42, 11], [1, 60, 2, 17, 17, 4, 88, 30]]
EDITS = {"r0": {"r": 0}, "lm-head-not-saved": {"modules_to_save": ["lm_head"]},
         # Python's json writes and reads NaN and Infinity, which JSON itself does not have
         "alpha-nan": {"lora_alpha": float("nan")}, "alpha-pattern-inf": {"alpha_pattern": {"v_proj": float("inf")}},
         "dropout-nan": {"lora_dropout": float("nan")}}  # peft builds Identity for it (nan > 0 is false)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import load_file

    from tests.adapters import edited_copy, make_llama_base, make_lora_adapter

    root = tmp_path_factory.mktemp("by-release")
    made = {"base": make_llama_base(root / "base")}
    made["lora"] = make_lora_adapter(root / "lora", made["base"], base_model_name_or_path="peftdoctor-tests/llama")
    torch.save(load_file(made["lora"] / "adapter_model.safetensors"), made["lora"] / "adapter_model.bin")
    for name, changes in EDITS.items():
        made[name] = edited_copy(made["lora"], root / name, changes, indent=2)
    return made


@pytest.fixture(scope="module")
def computed(adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    spec = tmp_path_factory.mktemp("spec") / "spec.json"
    jobs = [[name, str(adapters[name]), []] for name in ("lora", *EDITS)]
    spec.write_text(json.dumps({"base": str(adapters["base"]), "input_ids": INPUT_IDS, "jobs": jobs}))
    return {loader: answer_of(loader, "lora_logits.py", str(spec)) for loader in LOADERS}


def differs(a: list, b: list) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


def findings(directory: Path, loader: str, code: str) -> list[Any]:
    return [f for f in check(str(directory), peft=version_of(loader)).findings if f.code == code]


@pytest.mark.parametrize("loader", LOADERS)
def test_zero_rank_is_judged_as_the_release_does(adapters: dict[str, Path], computed: dict[str, Any],
                                                 loader: str) -> None:
    answer = computed[loader]
    assert differs(answer["jobs"]["lora"]["logits"], answer["base"]) > 1e-3  # the adapter does change the base
    real = answer["jobs"]["r0"]
    report = check(str(adapters["r0"]), peft=version_of(loader))
    if real["ok"]:  # releases without the r check build no LoRA layer and ignore the weights: the base, exactly
        assert differs(real["logits"], answer["base"]) == 0.0
        [found] = [f for f in report.findings if f.code == "PD206"]
        assert "computes the base model" in found.message and "size mismatch" not in found.message
    else:
        error = f"{real['error_type']}: {real['error']}"
        assert error == "ValueError: `r` should be a positive integer value but the value passed is 0"
        assert not [f for f in report.findings if f.code == "PD206"], report.findings
        [found] = [f for f in report.findings if f.code == "PD104"]
        assert found.key == "r" and error in found.message
    assert found.fix == "set r to 4, the rank the saved weights hold"


@pytest.mark.parametrize("loader", LOADERS)
def test_modules_to_save_without_weights_is_judged_as_the_release_does(
        adapters: dict[str, Path], computed: dict[str, Any], loader: str) -> None:
    answer = computed[loader]
    real = answer["jobs"]["lm-head-not-saved"]
    [found] = findings(adapters["lm-head-not-saved"], loader, "PD209")
    raises = Version(version_of(loader)) >= Version(semantics.MODULES_TO_SAVE_KEYERROR_SINCE)
    if raises:
        assert (real["ok"], real["error_type"], real["error"]) == (False, "KeyError", "'base_model.model.lm_head.weight'")
        assert f"peft {version_of(loader)} raises KeyError" in found.message
    else:  # loads, and computes what the plain adapter computes: lm_head is the base's own
        assert real["ok"] and differs(real["logits"], answer["jobs"]["lora"]["logits"]) == 0.0
        assert "the base's own module" in found.message and "KeyError" not in found.message


@pytest.mark.parametrize("version", [str(v) for v in releases.known_versions()])
def test_the_key_error_release_holds_for_every_release(version: str) -> None:
    """semantics.MODULES_TO_SAVE_KEYERROR_SINCE against each release's own set_peft_model_state_dict (its
    wheel): the releases that look each wrapped copy's tensors up by name are exactly those from it on."""
    from tests.era.released_source import wheel

    with zipfile.ZipFile(wheel(version)) as archive:
        source = archive.read("peft/utils/save_and_load.py").decode()
    looks_up = re.search(r"= peft_model_state_dict\[lookup_key\]", source) is not None
    assert looks_up == (Version(version) >= Version(semantics.MODULES_TO_SAVE_KEYERROR_SINCE))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", ["alpha-nan", "alpha-pattern-inf", "dropout-nan"])
def test_non_finite_scaling_is_judged_as_the_release_computes(adapters: dict[str, Path], computed: dict[str, Any],
                                                              name: str, loader: str) -> None:
    real = computed[loader]["jobs"][name]
    assert real["ok"], real  # no release refuses it
    nan = torch.tensor(real["logits"]).isnan()
    report = check(str(adapters[name]), peft=version_of(loader))
    found = [f for f in report.findings if f.code == "PD120"]
    if nan.all():
        assert len(found) == 1 and "every output of the adapted layers is NaN" in found[0].message, report.findings
        assert found[0].severity.value == "error"
        assert not [f for f in report.findings if f.code == "PD104" and f.key == found[0].key], report.findings
    else:  # a NaN dropout, or an alpha_pattern the release does not know (dropped): finite, and no finding
        assert not nan.any() and not found, (report.findings, loader)
        assert name == "dropout-nan" or (name, loader) == ("alpha-pattern-inf", "0.3.0")
