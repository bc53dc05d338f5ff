"""Properties of `fix` over generated configs, checked against the fixture's real weights:

- what fix writes is standard JSON (no NaN, no Infinity, no lone surrogate) and parses to the plan;
- fix is idempotent: a second plan on what the first wrote changes nothing and refuses nothing;
- fix never changes meaning unless forced: every module's LoRA scale (computed here from the
  config as peft's own rule, alpha/r or alpha/sqrt(r), per module through the patterns) is the same
  before and after, target_modules are kept or spelled out as the weights' modules, and any key
  dropped without --force was a no-op or was folded into another.

Derandomized (fixed seed, no example database): CI and every clone see the same examples.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from hypothesis import event, given, settings
from hypothesis import strategies as st

from peftdoctor.io.adapter import UnusableInput
from peftdoctor.ops import fix as fixing
from peftdoctor.peft import compat, patterns, releases
from tests.test_fuzz import FUZZ, HUGE_NUMBERS, UNICODE_TEXT, mutated_configs

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BASE: dict[str, Any] = json.loads((CLEAN / "adapter_config.json").read_text())
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
           "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
# PEFTDOCTOR_FIX_EXAMPLES=20000 PEFTDOCTOR_FIX_SEEDED=0 explores beyond the fixed examples.
PROPERTIES = settings(FUZZ, derandomize=os.environ.get("PEFTDOCTOR_FIX_SEEDED", "1") == "1", database=None,
                      max_examples=int(os.environ.get("PEFTDOCTOR_FIX_EXAMPLES", "150")))

NUMBERS = st.integers(1, 64) | st.floats(0.5, 64) | HUGE_NUMBERS | st.sampled_from([0, -4, True, "8", None])
PATTERN_KEYS = st.sampled_from(["q_proj", "v_proj", "self_attn.q_proj", "layers.1.self_attn.v_proj",
                                "model.layers.0.self_attn.q_proj", "^model.layers.1.*", r".*\.q_proj"])
TARGETS = st.sampled_from(["0.1.0", "0.3.0", "0.6.2", "0.7.1", "0.8.0", "0.9.0", "0.12.0", "0.13.2", "0.14.0",
                           "0.21.2"])
SERVE = st.sampled_from([None, None, "vllm==0.6.3", "sglang"])


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config = dict(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(BASE)), max_size=6)):
        config.pop(key, None)
    choices = {
        "use_rslora": st.booleans(),
        "r": NUMBERS, "lora_alpha": NUMBERS,
        "rank_pattern": st.dictionaries(PATTERN_KEYS, NUMBERS, max_size=3),
        "alpha_pattern": st.dictionaries(PATTERN_KEYS, NUMBERS, max_size=3),
        "target_modules": st.sampled_from(["all-linear", "q_proj", r".*\.(q_proj|v_proj)", ["q_proj", "v_proj"],
                                           ["q_proj"], "v_proj"]),
        "exclude_modules": st.sampled_from([None, [], ["v_proj"], "q_proj"]),
        "use_dora": st.booleans(),
        "lora_dropout": st.sampled_from([0.0, 0.1, float("nan")]),
        "peft_version": st.sampled_from(["0.6.2", "0.13.2", "0.21.2", "1.0.0.dev0@abc"]),
        "init_lora_weights": st.sampled_from([True, False, "gaussian", "pissa", "olora"]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(choices)), max_size=5, unique=True)):
        config[key] = draw(choices[key])
    for key, value in draw(st.dictionaries(UNICODE_TEXT, st.none() | st.booleans() | st.integers(), max_size=2)).items():
        config[key] = value
    return config


def _strict(text: str) -> Any:
    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def _scales(config: dict[str, Any], version: Any, rslora: bool) -> Optional[dict[str, float]]:
    """Each module's LoRA scale as `version` builds it from `config`; None where it is no number."""
    values = patterns.module_values(config, MODULES, version)
    out = {}
    for module, (rank, alpha) in values.items():
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e300 for v in (rank, alpha)):
            return None
        out[module] = alpha / (math.sqrt(rank) if rslora else rank)
    return out


def _write(directory: Path, config: dict[str, Any]) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(CLEAN, directory)
    text = json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
    (directory / "adapter_config.json").write_bytes(text + b"\n")
    return directory


@PROPERTIES
@given(config=configs(), target=TARGETS, force=st.booleans(), serve=SERVE)
def test_fix_is_standard_idempotent_and_keeps_meaning(tmp_path_factory: Any, config: dict[str, Any], target: str,
                                                       force: bool, serve: Optional[str]) -> None:
    directory = _write(tmp_path_factory.mktemp("prop") / "adapter", config)
    try:
        plan = fixing.plan(str(directory), peft=target, force=force, serve=serve)
    except UnusableInput:
        event("unusable")
        return  # a one-line diagnosis (exit 2), e.g. a config that is no PEFT adapter
    event("refused" if plan.refused else "changed" if plan.changed else "unchanged")
    if plan.refused or not plan.changed:
        return
    text = fixing.new_text(plan)
    text.encode("utf-8")  # no lone surrogate: the file is valid UTF-8
    assert _strict(text) == plan.result

    release = releases.load(releases.parse_version(target))
    forced = {c.key for c in plan.changes if c.forced}
    assert all(c.reason.startswith("FORCED") for c in plan.changes if c.forced)
    if not forced:
        for change in plan.changes:
            if change.action == "drop" and change.key not in ("use_rslora", "exclude_modules"):
                assert compat.noop_reason(plan.original, change.key), f"{change.key} dropped but bears meaning"
        tm_before, tm_after = plan.original.get("target_modules"), plan.result.get("target_modules")
        assert tm_after == tm_before or tm_after == sorted(MODULES), "target_modules matches differently"
        source = releases.parse_version(compat.written_by(plan.original) or "") or release.version
        source_rslora = plan.original.get("use_rslora") is True
        target_rslora = plan.result.get("use_rslora") is True and "use_rslora" in release.fields("LORA")
        before = _scales(plan.original, source, source_rslora)
        after = _scales(plan.result, release.version, target_rslora and serve is None)
        # Where the two releases resolve the patterns differently, the config means two things
        # already (check reports that); fix's own changes are judged where they agree.
        agreed = before == _scales(plan.original, release.version, source_rslora)
        if before is not None and agreed and (serve is None or "use_rslora" not in plan.result):
            assert after is not None and all(math.isclose(before[m], after[m], rel_tol=1e-9) for m in MODULES), \
                f"scales changed: {before} -> {after}"

    (directory / "adapter_config.json").write_text(text)
    again = fixing.plan(str(directory), peft=target, force=force, serve=serve)
    assert not again.refused, f"second run refuses {again.refusals}"
    assert not again.changed, f"second run changes {again.changes}"


@PROPERTIES
@given(config=mutated_configs(), target=TARGETS, force=st.booleans())
def test_fix_of_hostile_configs_is_standard_and_idempotent(tmp_path_factory: Any, config: dict[str, Any],
                                                           target: str, force: bool) -> None:
    """test_fuzz's mutated configs (huge numbers, NaN, surrogates, wrong types) through the API:
    a one-line UnusableInput or a plan; what it would write is standard JSON; a second run is a no-op."""
    directory = _write(tmp_path_factory.mktemp("hostile") / "adapter", config)
    try:
        plan = fixing.plan(str(directory), peft=target, force=force)
    except UnusableInput as exc:
        assert "\n" not in str(exc)
        return
    if plan.refused or not plan.changed:
        return
    text = fixing.new_text(plan)
    text.encode("utf-8")
    assert _strict(text) == plan.result
    (directory / "adapter_config.json").write_text(text)
    again = fixing.plan(str(directory), peft=target, force=force)
    assert not again.refused and not again.changed, (again.refusals, again.changes)
