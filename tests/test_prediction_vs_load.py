"""check's prediction against the ground truth (issue 19, items 1 and 5): for each adapter, what
peft/application.py predicts the installed peft applies on the base's module tree must be what the installed
peft's real PeftModel.from_pretrained applies (`verify --load-only`, peftdoctor.load_only): the same tensors
going nowhere, the same modules left without weights computing the same thing, the same verdict.

The adapters are the failure families of the issue (tests/test_application.py builds them and shows there, with
logits, what real peft computes) and clean adapters saved by real peft.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from packaging.version import Version

from peftdoctor import load_only
from peftdoctor.io.adapter import open_adapter
from peftdoctor.io.base import find_base_config
from peftdoctor.peft import application, releases, transformers_axis
from peftdoctor.rules.application import sizes
from tests.adapters import edited_copy
from tests.test_application import foreign, made, rekeyed  # noqa: F401 - made: the same tiny bases and adapters

# check's verdict -> load-only's, where the two name the same outcome; partial/random differ in wording only
# (load-only's "random" is "nothing applied, random weights"; check's is "some modules random").
SAME = {"ok": "applies", "base": "base-only"}


CASES: dict[str, tuple[str, Callable[[dict[str, Path], Path], Path]]] = {
    "clean llama": ("llama", lambda m, t: m["lora-llama"]),
    "clean gpt2 (Conv1D)": ("gpt2", lambda m, t: m["lora-gpt2"]),
    "no prefix": ("llama", lambda m, t: rekeyed(m["lora-llama"], t, lambda k: k.removeprefix("base_model.model."))),
    "doubled prefix": ("llama", lambda m, t: rekeyed(m["lora-llama"], t, lambda k: "base_model.model." + k)),
    "gpt2 without prefix": ("gpt2", lambda m, t: rekeyed(m["lora-gpt2"], t,
                                                          lambda k: k.removeprefix("base_model.model."))),
    "adapter name kept": ("llama", lambda m, t: rekeyed(m["lora-llama"], t,
                                                         lambda k: k.replace(".weight", ".mine.weight"))),
    "OPT paths on llama": ("llama", lambda m, t: foreign(m["lora-llama"], t, "opt")),
    "target without weights, init false": ("llama", lambda m, t: edited_copy(
        m["lora-llama"], t, {"target_modules": ["k_proj", "q_proj", "v_proj"], "init_lora_weights": False})),
    "target without weights, zero init": ("llama", lambda m, t: edited_copy(
        m["lora-llama"], t, {"target_modules": ["k_proj", "q_proj", "v_proj"]})),
}


def predicted(adapter: Path, base: Path) -> application.Application:
    read = open_adapter(str(adapter))
    found = find_base_config(str(base))
    transformers = transformers_axis.choose(None)[0]
    tree = application.tree_for(found.config, "", transformers=transformers)
    peft = Version(releases.installed_peft() or "0")
    return application.apply(read.tensors, sizes(read), read.config, tree, peft, transformers)


@pytest.mark.parametrize("case", list(CASES))
def test_check_predicts_what_the_installed_peft_applies(made: dict[str, Path], tmp_path: Path, case: str) -> None:
    base_name, build = CASES[case]
    adapter = build(made, tmp_path / "adapter")
    prediction = predicted(adapter, made[base_name])
    truth: Any = load_only(str(adapter), base=str(made[base_name]))
    assert truth.verdict != "fails", truth.error
    assert (truth.verdict == "applies") == case.startswith("clean"), (case, truth.verdict)  # each case bites
    assert sorted(p.name.key for p in prediction.ignored) == sorted(truth.unexpected), case
    assert sorted(prediction.unweighted) == sorted(truth.unadapted_modules), case
    computes = {u.computes for u in truth.unadapted}
    assert computes <= ({"random"} if prediction.random else {"base"}), (case, computes)
    verdict = prediction.verdict
    assert SAME.get(verdict, truth.verdict) == truth.verdict and (verdict in SAME) == (truth.verdict in SAME.values())
