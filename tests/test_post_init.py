"""Post-init rules: values a release refuses once its config class (or the model it builds) has them.

The rules are measured by scripts/peft_introspect.py and stored in the schemas; here configs that
break them are written by real peft (or by real peft and then edited the way sweep tools and hand
edits do), each is loaded *and built into a PeftModel* by real releases, and check's prediction for
each release must equal what that release did: result and exact error text. Clean configs must stay
ok everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peftdoctor import check
from peftdoctor.peft import postinit, releases
from peftdoctor.peft.releases import installed_peft
from tests.in_release import outcomes, version_of, written_by_releases

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"

# 0.6.2 raises on unknown keys, 0.13.2 accepts total_step null and a lone layers_pattern, 0.15.0 is
# the first to refuse total_step null, the installed release warns on unknown keys.
LOADERS = ["0.6.2", "0.13.2", "0.15.0", "installed"]

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
WRITTEN = {  # name: (writer release, config class, kwargs, edits made to the saved JSON afterwards)
    # sweep tools write floats; peft's dataclass keeps 8.0 and saves it
    "lora-float-r": ("installed", "LoraConfig", {**LORA, "r": 8.0}, {}),
    "lora-float-r-by-0.13.2": ("0.13.2", "LoraConfig", {**LORA, "r": 8.0}, {}),
    "lora-string-r": ("installed", "LoraConfig", LORA, {"r": "8"}),
    "lora-zero-r": ("installed", "LoraConfig", LORA, {"r": 0}),
    # AdaLoRA saved by peft <= 0.14 without total_step: written as null
    "adalora-total-step-null-by-0.13.2": ("0.13.2", "AdaLoraConfig", {"target_modules": ["q_proj"]}, {}),
    # 0.13.2 accepts layers_pattern without layers_to_transform; 0.14 on refuse it
    "lora-layers-pattern-by-0.13.2": ("0.13.2", "LoraConfig", {**LORA, "layers_pattern": "layers"}, {}),
    # pairs the installed class refuses to construct, so they are hand edits of a saved config
    "lora-bias-with-dora": ("installed", "LoraConfig", LORA, {"lora_bias": True, "use_dora": True}),
    "lora-bias-with-pissa": ("installed", "LoraConfig", LORA, {"lora_bias": True, "init_lora_weights": "pissa"}),
    "lora-regex-with-layers": ("installed", "LoraConfig", LORA,
                               {"target_modules": ".*q_proj", "layers_to_transform": [0]}),
    "adalora-negative-orth-reg": ("installed", "AdaLoraConfig", {"target_modules": ["q_proj"], "total_step": 100},
                                  {"orth_reg_weight": -0.75}),
    # clean: nothing above may leak onto these
    "clean-lora-float-alpha": ("installed", "LoraConfig", {**LORA, "lora_alpha": 16.0}, {}),
    "clean-lora-dora": ("installed", "LoraConfig", {**LORA, "use_dora": True}, {}),
    "clean-adalora": ("installed", "AdaLoraConfig", {"target_modules": ["q_proj"], "total_step": 100}, {}),
    "clean-lora-by-0.13.2": ("0.13.2", "LoraConfig", LORA, {}),
    "clean-lora-bias": ("installed", "LoraConfig", {**LORA, "lora_bias": True}, {}),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {name: tmp_path_factory.mktemp(name) for name in WRITTEN}
    written_by_releases(out, {name: (w, cls, kwargs) for name, (w, cls, kwargs, _) in WRITTEN.items()})
    for name, (_, _, _, edits) in WRITTEN.items():
        path = out[name] / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **edits}, indent=2))
    return out


@pytest.fixture(scope="module")
def real_outcomes(written: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{loader: {directory: outcome}}: each release loads every config and builds its PeftModel."""
    return outcomes(LOADERS, "build_model.py", written.values())


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", list(WRITTEN))
def test_prediction_matches_real_build(written: dict[str, Path], real_outcomes: dict[str, dict[str, Any]],
                                       name: str, loader: str) -> None:
    directory = written[name]
    predicted = {c.peft: c for c in check(str(directory)).compatibility}[version_of(loader)]
    real = real_outcomes[loader][str(directory)]
    assert (predicted.result, predicted.error) == (real["result"], real["error"])
    assert sorted(predicted.dropped) == sorted(real["dropped"])


def test_the_cases_exercise_post_init_rules(real_outcomes: dict[str, dict[str, Any]],
                                            written: dict[str, Path]) -> None:
    """The comparison means little unless real releases refuse these configs after construction."""
    installed = real_outcomes["installed"]
    for name in WRITTEN:
        outcome = installed[str(written[name])]["result"]
        assert (outcome == "fails") == (not name.startswith("clean-")), (name, installed[str(written[name])])
    # total_step null: accepted by the release that wrote it, refused from 0.15.0 on
    adalora = str(written["adalora-total-step-null-by-0.13.2"])
    assert real_outcomes["0.13.2"][adalora]["result"] == "ok"
    assert real_outcomes["0.15.0"][adalora]["error"].startswith("ValueError: AdaLoRA does not work when")


def test_the_target_release_refusal_is_a_finding(real_outcomes: dict[str, dict[str, Any]],
                                                 written: dict[str, Path]) -> None:
    """check used to name these refusals only in the compatibility table: for lora_bias with DoRA or r=0 the
    installed release's own report said nothing (r=0 got a size mismatch). Now each is a PD104 error with the
    release's own text."""
    for name in WRITTEN:
        real = real_outcomes["installed"][str(written[name])]
        found = [f for f in check(str(written[name])).findings if f.code == "PD104" and f.severity.value == "error"]
        if real["result"] == "fails":
            assert any(real["error"][:100] in f.message for f in found), (name, real, found)
        else:
            assert not found, (name, found)


# ------------------------------------------------------- the stored rules

def committed() -> list[str]:
    return sorted((p.stem.removeprefix("peft-") for p in SCHEMAS.glob("peft-*.json")),
                  key=releases.parse_version)


def stored_rules(version: str) -> list[dict[str, Any]]:
    return json.loads((SCHEMAS / f"peft-{version}.json").read_text())["x-peft"]["post_init_rules"]


def as_config(example: dict[str, Any], key: str) -> dict[str, Any]:
    return {} if example.get("absent") else {key: example["value"]}


@pytest.mark.parametrize("version", committed())
def test_every_stored_clause_agrees_with_its_probes(version: str) -> None:
    """peftdoctor's predicates accept every example the release refused and reject the counter value."""
    rules = stored_rules(version)
    for rule in rules:
        assert rule["stage"] in ("config", "model") and rule["peft_types"] == sorted(rule["peft_types"])
        for clause in rule["when"]:
            assert clause["match"] in postinit.MATCHES, clause
            for example in clause["examples"]:
                assert postinit.meets(clause, as_config(example, clause["key"])), (rule["id"], example)
            assert not postinit.meets(clause, as_config(clause["counter"], clause["key"])), rule["id"]
        for key in rule.get("placeholders", ()):
            assert "{" + key + "}" in rule["error"], rule["id"]


def test_measured_ranges() -> None:
    """The facts the issue names, as the releases showed them."""
    def ids(version: str, peft_type: str) -> set[str]:
        return {r["id"] for r in stored_rules(version) if peft_type in r["peft_types"]}

    versions = committed()
    for version in versions:
        assert "r-float" in ids(version, "LORA"), version
        refuses_null = releases.parse_version(version) >= releases.parse_version("0.15.0")
        assert ("total_step-null" in ids(version, "ADALORA")) == refuses_null, version
    assert "lora_bias-with-dora" in ids(installed_peft(), "LORA")
