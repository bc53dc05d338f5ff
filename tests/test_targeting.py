"""peftdoctor's target matcher (peft/targeting.py) against peft's own functions, and the bounded regex
matcher (peft/bounded.py) against `re`.

Differential: a deterministic generator builds module names and configs (lists, `.name` suffixes,
regexes, layers_to_transform with layers_pattern, exclude_modules, modules_to_save); each peft release
evaluates every case with its own check_target_module_exists in one subprocess, and peftdoctor's
answer must equal peft's for every case, errors included.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from peftdoctor.peft import bounded, targeting
from peftdoctor.peft.releases import installed_peft
from tests.in_release import answer_of, version_of

ROOT = Path(__file__).resolve().parent.parent
ERA = Path(__file__).resolve().parent / "era"
sys.path.insert(0, str(ERA))
import released_source  # noqa: E402
import target_matches  # noqa: E402

# 0.6.2: the first check_target_module_exists (COMMON_LAYERS_PATTERN, [] still filters);
# 0.13.2: before exclude_modules and the modules_to_save exclusion, greedy layer index.
OLD_RELEASES = ["0.6.2", "0.13.2"]

_PREFIXES = ["", "model.", "base.model.", "transformer.", "model.decoder."]
_STACKS = ["layers", "h", "blocks", "layer", "encoder.layer"]
_SUBS = ["self_attn", "mlp", "attn", "mlp.experts.3", "attention.self", "block_sparse_moe.experts.3"]
_LEAVES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "c_attn", "fc1", "query", "dense"]
_TOP = ["lm_head", "model.embed_tokens", "score", "classifier.out_proj", "classifier", "embed_out", "wte"]
_REGEXES = [r".*\.(q_proj|v_proj)", r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", r".*attn.*", r"(q|v)_proj",
            "lm_head", r".*\.\d\.mlp\..*", r".*(?<!experts\.3)\.up_proj", r"^(?!.*mlp).*proj$", r"[a-z.]*\.c_attn",
            r".*\.(1|3)\..*", "all-linear", r"(.*\.)?(q_proj|fc1)", r"(a+)+b", r"(x|xx)+$", r".*\.(Q_PROJ)(?i)"]
_LAYER_PATTERNS: list[Any] = [None, "", [], "layers", "h", ["layers", "h"], ["blocks"], "encoder.layer",
                              "(layers|h)", "(?:layers|h)", ["h", "layers"], "layer"]


def _names(rng: random.Random) -> list[str]:
    names = set(rng.sample(_TOP, 3))
    while len(names) < 14:
        names.add(f"{rng.choice(_PREFIXES)}{rng.choice(_STACKS)}.{rng.randrange(0, 13)}."
                  f"{rng.choice(_SUBS)}.{rng.choice(_LEAVES)}")
    return sorted(names)


def _entry(rng: random.Random, names: list[str]) -> str:
    name = rng.choice(names)
    parts = name.split(".")
    return ".".join(parts[-rng.randint(1, min(3, len(parts))):]) if rng.random() < 0.3 else \
        rng.choice(_LEAVES + ["lm_head", "embed_tokens", "out_proj", "proj", "attn.q_proj", "_proj", "q_proj|fc1",
                            "(q|v)_proj", "dense.*"])


def _config(rng: random.Random, names: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if rng.random() < 0.3:
        config["target_modules"] = rng.choice(_REGEXES)
    else:
        config["target_modules"] = sorted({_entry(rng, names) for _ in range(rng.randint(1, 4))})
        if rng.random() < 0.15:
            config["target_modules"].append(rng.choice(names))  # an exact name
    if rng.random() < 0.5:
        config["layers_to_transform"] = rng.choice([[], 0, 3, [0, 1], [2, 3, 12], [1], [3], [0, 3, 5]])
        config["layers_pattern"] = rng.choice(_LAYER_PATTERNS)
    if rng.random() < 0.3:
        config["exclude_modules"] = rng.choice([["q_proj"], ["mlp.up_proj", "dense"], r".*\.1\..*", "lm_head",
                                                [rng.choice(names)], r"(a|aa)+$"])
    if rng.random() < 0.3:
        config["modules_to_save"] = rng.choice([["score"], ["lm_head"], ["classifier"], ["q_proj"], ["dense"]])
    return config


def _cases(count: int = 300, seed: int = 10) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        names = _names(rng)
        out.append({"config": _config(rng, names), "names": names})
    return out


def _ours(config: dict[str, Any], name: str, version: Version) -> object:
    if targeting.is_all_linear(config.get("target_modules"), version):
        # check_target_module_exists sees all-linear only as the regex "all-linear" (the expansion
        # happens before it, in _maybe_include_all_linear_layers); compared separately below.
        config = {**config, "target_modules": "all-linear(?#as a regex)"}
    try:
        return targeting.targeted(config, name, version)
    except targeting.PROBLEMS as exc:
        return f"error: {'error' if isinstance(exc, re.error) else type(exc).__name__}"  # peft: re.error's name


def _peft(release: str, cases_file: Path) -> list[list[object]]:
    return answer_of(release, "target_matches.py", str(cases_file), timeout=600)


def _differ(cases: list[dict[str, Any]], theirs: list[list[object]], version: Version) -> list[tuple]:
    return [(case["config"], name, ours, answer)
            for case, answers in zip(cases, theirs) for name, answer in zip(case["names"], answers)
            if (ours := _ours(case["config"], name, version)) != answer]


@pytest.mark.parametrize("release", ["installed", *OLD_RELEASES])
def test_targeted_equals_check_target_module_exists(release: str, tmp_path: Path) -> None:
    cases = _cases()
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    theirs = _peft(release, tmp_path / "cases.json")
    differ = _differ(cases, theirs, Version(version_of(release)))
    assert not differ, f"{len(differ)} of {sum(len(c['names']) for c in cases)} differ, e.g. {differ[:5]}"
    assert sum(len(c["names"]) for c in cases) > 3000


# The regimes between the envs of OLD_RELEASES, and the function's name in each release.
RELEASED_FUNCTIONS = {"0.5.0": "LoraModel._check_target_module_exists", "0.8.0": "check_target_module_exists",
                      "0.14.0": "check_target_module_exists", "0.16.0": "check_target_module_exists",
                      "0.17.0": "check_target_module_exists", "0.20.0": "check_target_module_exists"}


@pytest.mark.parametrize("release", sorted(RELEASED_FUNCTIONS, key=Version))
def test_targeted_equals_peft_function_of_releases_without_an_env(release: str) -> None:
    """The regimes between the envs above: peft's own function, read from that release's wheel
    (tests/era/released_source.py) and run on the same cases."""
    function = released_source.peft_function(release, RELEASED_FUNCTIONS[release])
    cases = _cases()
    theirs = target_matches.evaluate(function, cases)
    differ = _differ(cases, theirs, Version(release))
    assert not differ, f"{len(differ)} differ, e.g. {differ[:5]}"


def test_generator_covers_every_regime_change() -> None:
    """The differential test is only as good as its cases: every boundary between two regimes changes
    the answer for some generated case, and both answers are common."""
    cases = _cases()
    answers = {v: [_ours(c["config"], n, Version(v)) for c in cases for n in c["names"]]
               for v in ("0.5.0", "0.6.0", "0.6.2", "0.7.1", "0.8.0", "0.13.2", "0.14.0", "0.15.2", "0.16.0", "0.19.1", "0.20.0",
                         "0.21.0")}
    for before, after in [("0.5.0", "0.6.0"), ("0.7.1", "0.8.0"), ("0.13.2", "0.14.0"), ("0.15.2", "0.16.0"), ("0.19.1", "0.20.0"),
                          ("0.20.0", "0.21.0")]:
        changed = sum(a != b for a, b in zip(answers[before], answers[after]))
        assert changed >= 3, (before, after, changed)
    assert min(answers["0.21.0"].count(True), answers["0.21.0"].count(False)) > 300
    assert any(isinstance(a, str) for a in answers["0.19.1"])  # peft's own errors are compared too


def test_all_linear_equals_peft_expansion() -> None:
    """all-linear: targeting.targeted over a real model's Linear names equals peft's own expansion."""
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    expanded = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    version = Version(installed_peft())
    config = {"target_modules": "ALL-LINEAR"}
    assert {n for n, _ in model.named_modules() if targeting.targeted(config, n, version, linear)} == set(expanded)
    # Without the base: every module holding weights counts as Linear, only the head is left out.
    assert {n for n in linear if targeting.targeted(config, n, version)} == set(expanded)
    assert "lm_head" not in expanded
    assert not targeting.is_all_linear("all-linear", Version("0.7.1"))  # a plain regex before 0.8.0


def test_modules_to_save_match_peft_set_trainable() -> None:
    """_set_trainable's rule: a module whose name ends with an entry gets the trainable copy."""
    assert targeting.saves("score", ["score"]) and targeting.saves("model.xscore", ["score"])
    assert not targeting.saves("score.dense", ["score"])
    assert targeting.saved_by("classifier.out_proj.weight", ["classifier"])
    assert not targeting.saved_by("classifier.weight", ["out_proj"])


# --- bounded regex matching -------------------------------------------------------------------------

ORDINARY = [r".*\.(q_proj|v_proj)", r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", r"(q|k|v)_proj",
            r".*\.(up|down|gate)_proj$", r"[a-z_.]+\d?\.mlp\.(fc1|fc2)", r".*layers\.[0-9]{1,2}\..*",
            r"^model\.(?:layers|h)\.(\d+)\.(\w+)\.(?P<leaf>\w+)$", r".*?\.[^.]*\.(?P<idx>\d+)\.",
            r"(?:^|.*?\.)layers\.(?P<idx>\d+)\.", r".*\.layers\.(\d+)\.", r"(?i).*Q_PROJ", r".*\bmlp\b.*",
            r"^(?!.*vision).*_proj$", r".*(?<=attn)\.q_proj", r"\w+(\.\w+)*", r".*\.{2}.*", r"\S+\s?",
            r"model\.layers\.[^13]\..*", r"(.*\.)?(v_proj|o_proj)$", r".*.h\.(\d+)\.*", r"(a|b)*c?"]


def _texts(rng: random.Random) -> list[str]:
    return ["model.layers.0.self_attn.q_proj", "model.layers.12.mlp.fc1", "transformer.h.3.attn.c_attn",
            "model.vision.layers.1.q_proj", "model.layers.1.mlp.experts.3.up_proj", "", "lm_head", "ab" * 5 + "c",
            "model..layers", "model.layers.7.self_attn.Q_PROJ", "x y", "model.layers.2.self_attn.q_proj.\n"] + [
        ".".join(rng.choice(["model", "layers", "h", str(rng.randrange(20)), "q_proj", "mlp", "attn", "a", "b"])
                 for _ in range(rng.randint(1, 7))) for _ in range(60)]


@pytest.mark.parametrize("pattern", ORDINARY)
def test_vm_equals_re_on_ordinary_patterns(pattern: str) -> None:
    """The VM (used for patterns `re` cannot bound) gives re's answer and groups; so does the dispatcher."""
    compiled = re.compile(pattern)
    program = bounded._program(pattern)
    for text in _texts(random.Random(pattern)):
        for full in (False, True):
            expected = (compiled.fullmatch if full else compiled.match)(text)
            spans = bounded._vm(program.code, text, 0, len(text) if full else None, {})
            assert (spans is None) == (expected is None), (pattern, text, full)
            if expected is not None:
                assert [bounded._slice(text, spans, g) for g in range(compiled.groups + 1)] == \
                    [expected.group(g) for g in range(compiled.groups + 1)], (pattern, text, full)
        assert bounded.fullmatch(pattern, text) == (compiled.fullmatch(text) is not None)
        found = bounded.match(pattern, text)
        assert (found is None) == (compiled.match(text) is None)


@pytest.mark.parametrize("pattern,text", [(r"(a+)+b", "a" * 40), (r"(a|aa)+$", "a" * 40 + "!"),
                                          (r".*\.(a+)+b", "x." + "a" * 60), (r"(.*)*x", "y" * 50),
                                          (r"(.*\.)?((a|a)+)$", "a" * 40 + "."),
                                          (r".*.*.*.*.*.*.*.*x", "a" * 60)])
def test_catastrophic_patterns_finish(pattern: str, text: str) -> None:
    started = time.perf_counter()
    assert not bounded.fullmatch(pattern, text) and bounded.match(pattern, text) is None
    assert time.perf_counter() - started < 1.0
    assert bounded._backtracking_steps(pattern, len(text)) > bounded.MAX_STEPS  # the VM answered


def test_backreference_in_a_nested_repeat_is_refused_not_run() -> None:
    with pytest.raises(re.error, match="cannot be evaluated in bounded time"):
        bounded.fullmatch(r"((a+)\2)+b", "a" * 40)
    assert bounded.fullmatch(r"(a)\1", "aa")  # a backreference `re` can bound is just run


# --- regressions at the call sites --------------------------------------------------------------------

def _cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def all_linear_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real adapter trained by real peft with target_modules="all-linear"; peft writes the expanded
    names, so the config is given back the value the training recipe had (as hand-edited and
    recipe-generated configs carry it)."""
    from adapters import make_llama_base, make_lora_adapter

    root = tmp_path_factory.mktemp("all-linear")
    adapter = make_lora_adapter(root / "adapter", make_llama_base(root / "base"), target_modules="all-linear",
                                base_model_name_or_path="org/tiny-llama")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert isinstance(config["target_modules"], list) and len(config["target_modules"]) == 14
    config["target_modules"] = "all-linear"
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return adapter


def test_tgi_does_not_take_all_linear_for_a_module_name(all_linear_adapter: Path, tmp_path: Path) -> None:
    """Regression: without readable weights (here a pickle-only copy, as safe_serialization=False saves),
    `check --target tgi` reported "modules all-linear are not among q_proj, ..." (PD415, an error)."""
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((all_linear_adapter / "adapter_config.json").read_text())
    torch.save(load_file(str(all_linear_adapter / "adapter_model.safetensors")), pickled / "adapter_model.bin")
    for directory in (pickled, all_linear_adapter):
        done, _ = _cli("check", str(directory), "--target", "tgi", "--format", "json")
        findings = json.loads(done.stdout)["findings"]
        assert not [f for f in findings if "all-linear" in f["message"] and f["code"].startswith("PD4")], findings
        assert not [f for f in findings if f["code"] in ("PD207", "PD208")], findings


def test_all_linear_weights_on_the_head_are_reported_stray(tmp_path: Path) -> None:
    """all-linear leaves the output head out (_maybe_include_all_linear_layers): LoRA weights for lm_head
    under an all-linear config are never loaded by peft, and check says so (PD208)."""
    from adapters import make_llama_base, make_lora_adapter

    adapter = make_lora_adapter(tmp_path / "adapter", make_llama_base(tmp_path / "base"),
                                target_modules=["q_proj", "lm_head"], base_model_name_or_path="org/tiny-llama")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": "ALL-LINEAR"}))
    from peftdoctor import check

    stray = [f for f in check(str(adapter)).findings if f.code == "PD208"]
    assert len(stray) == 1 and "lm_head" in stray[0].message and "q_proj" not in stray[0].message


def _hostile_adapter(directory: Path) -> Path:
    """Real safetensors weights for two 40-odd-character module names, and a config whose regexes
    backtrack catastrophically on them in `re` (minutes each)."""
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir()
    modules = ["a" * 40, "a" * 40 + "c"]
    tensors = {f"base_model.model.{m}.{role}.weight": np.zeros(shape, dtype=np.float32)
               for m in modules for role, shape in (("lora_A", (8, 16)), ("lora_B", (16, 8)))}
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "use_rslora": True,
              "target_modules": "(a|aa)+$", "rank_pattern": {"(a+)+b": 4}, "alpha_pattern": {"(a|aa)+b": 2},
              "base_model_name_or_path": "org/base", "peft_version": "0.21.2"}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


A40 = "a" * 40


@pytest.mark.parametrize("release,expected", [
    # one key for both, the first of rank's then alpha's keys with re.match(.*\.key$): only "x.a..." has a dot
    ("0.13.2", {A40: (8, 16), "x." + A40: (8, 3), A40 + "c": (8, 16)}),
    ("0.14.0", {A40: (8, 16), "x." + A40: (8, 3), A40 + "c": (8, 16)}),  # separately, same template
    ("0.21.2", {A40: (8, 3), "x." + A40: (8, 3), A40 + "c": (2, 16)}),  # (.*\.)?(key)$ also from the start
])
def test_each_pattern_regime_finishes_on_catastrophic_keys(release: str, expected: dict[str, tuple[int, int]]) -> None:
    """patterns.module_values (what check's PD206 and fix's rsLoRA folding resolve per release) with keys
    that make each regime's re.match template backtrack for minutes on these names."""
    from peftdoctor.peft import patterns

    config = {"r": 8, "lora_alpha": 16, "rank_pattern": {"(a+)+b": 4, "(a|aa)+c": 2}, "alpha_pattern": {"(a+)+$": 3}}
    started = time.perf_counter()
    assert patterns.module_values(config, list(expected), Version(release)) == expected
    assert time.perf_counter() - started < 2


def test_check_and_fix_finish_on_catastrophic_patterns(tmp_path: Path) -> None:
    """Regression (issue 14): `check` on this adapter ran for minutes (PD206's rank_pattern lookup and PD208's
    target_modules match); a pre-commit hook must not hang. `fix` refuses these configs before it resolves
    the patterns today; it is timed too, so that a new rewrite cannot bring the hang back."""
    adapter = _hostile_adapter(tmp_path / "hostile")
    done, seconds = _cli("check", str(adapter), "--format", "json")
    assert seconds < 10, seconds
    codes = {f["code"]: f["message"] for f in json.loads(done.stdout)["findings"]}
    # peft would target "a"*40 (it fully matches (a|aa)+) and not "a"*40+"c"; neither pattern key matches.
    assert "PD208" in codes and "c" in codes["PD208"] and "PD206" not in codes, codes
    for release in ("0.13.2", "0.9.0"):  # fix rewrites rsLoRA and the patterns for older releases
        done, seconds = _cli("fix", str(adapter), "--peft", release)
        assert seconds < 10, (release, seconds)
        assert "Traceback" not in done.stderr, done.stderr[-2000:]


# Configs whose regexes `re` refuses in some releases (PD118), and valid ones beside them; OPT's module
# names ("model.decoder.layers.0.self_attn.q_proj") are what tests/era/build_model.py builds on.
_REGEX_CONFIGS: dict[str, dict[str, Any]] = {
    "target-string": {"target_modules": "q_proj["},
    "target-deep": {"target_modules": "(" * 1200 + "q_proj" + ")" * 1200},
    "rank-key": {"target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj(": 4}},
    "alpha-key": {"target_modules": ["q_proj", "v_proj"], "alpha_pattern": {"q_proj": 4, "*v_proj": 2}},
    "layers-pattern": {"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "lay[ers"},
    "exclude-string": {"target_modules": ["q_proj", "v_proj"], "exclude_modules": "(v_proj"},
    "valid-regexes": {"target_modules": r".*\.(q|v)_proj", "rank_pattern": {r"layers\.0\..*q_proj": 2},
                      "layers_to_transform": [0], "layers_pattern": "(layers)"},
}
_REGEX_RELEASES = ["installed", "0.6.2", "0.13.2", "0.15.0"]


def test_invalid_regexes_fail_the_load_exactly_where_pd118_says(tmp_path: Path) -> None:
    """For each config and release, real peft builds the model (tests/era/build_model.py) and fails with
    re's error (or RecursionError) exactly where check reports PD118 for that release; nothing else fails."""
    from peftdoctor import check

    directories = []
    for name, fields in _REGEX_CONFIGS.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "task_type": "CAUSAL_LM", **fields}))
        directories.append(directory)
    for release in _REGEX_RELEASES:
        built = answer_of(release, "build_model.py", *map(str, directories))
        target = version_of(release)
        seen = {}
        for directory in directories:
            outcome = built[str(directory)]
            regex_failure = outcome["result"] == "fails" and outcome["error"].startswith(("error:", "RecursionError"))
            report = check(str(directory), peft=target)
            codes = [f.code for f in report.findings]
            seen[directory.name] = (regex_failure, "PD118" in codes)
            predicted = next(c for c in report.compatibility if c.peft == target)  # the 36-release table too
            assert regex_failure == (predicted.result == "fails" and (predicted.error or "").startswith("re.error")), \
                (release, directory.name, outcome, predicted)
            if "exclude" in directory.name and Version(target) < Version("0.14.0"):
                continue  # a key these releases do not know: PD105/PD109 speak for it, peft drops or refuses it
            assert regex_failure == ("PD118" in codes), (release, directory.name, outcome, codes)
        assert seen["valid-regexes"] == (False, False) and seen["target-string"] == (True, True), (release, seen)
