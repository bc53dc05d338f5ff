"""`peftdoctor fix --peft X` makes real peft X load the adapter AND compute what the newest peft computes.

Adapters are written by the installed (newest) peft on a tiny Llama base. For each (adapter, X) the
CLI rewrites a copy for X; then X, in its own side-by-side env, loads base + fixed adapter and
computes logits for a fixed batch of input_ids, which must equal (float32 tolerance) the installed
peft's logits with the ORIGINAL config. Controls keep the comparison honest: the adapter changes the
base's logits, the unfixed config really fails in X (TypeError: 0.6.x-0.13.x reject unknown keys),
and the naive hand edit (delete what X does not know, use_rslora included) computes something else.

One subprocess per release runs every load (importing peft takes seconds); all run at once.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ERA = Path(__file__).resolve().parent / "era"
sys.path.insert(0, str(ROOT / "scripts"))
import peft_envs  # noqa: E402

torch = pytest.importorskip("torch")

RELEASES = ["0.6.2", "0.9.0", "0.13.2"]  # all raise TypeError on unknown keys
INSTALLED = "installed"
ATOL, RTOL = 1e-5, 1e-4
INPUT_IDS = [[1, 5, 9, 20, 33, 7, 42, 11], [1, 60, 2, 17, 17, 4, 88, 30]]


@dataclass(frozen=True)
class Case:
    kwargs: dict[str, Any]  # LoraConfig keyword arguments
    edits: dict[str, Any]  # set in adapter_config.json after saving
    releases: tuple[str, ...] = tuple(RELEASES)
    rslora: bool = False


# The newest peft saves target_modules="all-linear" already resolved to module names; a config saved
# on its own (LoraConfig(...).save_pretrained, or by training scripts) keeps "all-linear", which
# the installed peft resolves to the same modules when it loads, so the weights still fit.
CASES: dict[str, Case] = {
    "plain": Case({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, {}),
    "rslora-r8": Case({"r": 8, "lora_alpha": 8, "use_rslora": True}, {}, rslora=True),
    "rslora-r4": Case({"r": 4, "lora_alpha": 8, "use_rslora": True}, {}, rslora=True),
    "rslora-patterns": Case({"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "v_proj"],
                             "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"v_proj": 3}}, {}, rslora=True),
    "all-linear": Case({"target_modules": "all-linear"}, {"target_modules": "all-linear"}),
    "exclude": Case({"target_modules": ["q_proj", "v_proj"],
                     "exclude_modules": ["model.layers.0.self_attn.q_proj"]}, {}),
    "rslora-all-linear-exclude": Case({"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": "all-linear",
                                       "exclude_modules": ["down_proj"]}, {"target_modules": "all-linear"},
                                      rslora=True),
    # DoRA came in 0.9.0: fixed for the releases that have it, refused for 0.6.2 (below).
    "dora": Case({"r": 4, "lora_alpha": 8, "use_dora": True}, {}, releases=("0.9.0", "0.13.2")),
}
PAIRS = [(name, release) for name, case in CASES.items() for release in case.releases]
# (0.6.2 cannot load the naive edit of an 'all-linear' config at all: see test_all_linear_cannot_be_kept_for_0_6_2.)
RSLORA_PAIRS = [(name, release) for name, release in PAIRS
                if CASES[name].rslora and not ("all-linear" in name and release == "0.6.2")]
REFUSED = ("dora", "0.6.2")


@dataclass
class Fixed:
    directory: Path
    returncode: int
    output: str


@dataclass
class World:
    base: Path
    originals: dict[str, Path]
    fixed: dict[tuple[str, str], Fixed]
    refused: Fixed
    refused_before: tuple[bytes, list[str]]
    outcomes: dict[str, dict[str, Any]]  # release or INSTALLED -> lora_logits.py's answer


def run_fix(directory: Path, release: str) -> Fixed:
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "fix", str(directory), "--peft", release],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    return Fixed(directory, done.returncode, done.stdout + done.stderr)


def logits_in(release: str, spec_path: Path) -> dict[str, Any]:
    argv, env = ([sys.executable], None) if release == INSTALLED else peft_envs.env_python_cmd(release)
    done = subprocess.run([*argv, str(ERA / "lora_logits.py"), str(spec_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"peft {release}: {done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from tests.adapters import make_llama_base, make_lora_adapter

    for release in RELEASES:
        peft_envs.ensure_env(release)
    root = tmp_path_factory.mktemp("fix-real")
    base = make_llama_base(root / "base")
    originals: dict[str, Path] = {}
    for name, case in CASES.items():
        originals[name] = make_lora_adapter(root / "original" / name, base, **case.kwargs)
        if case.edits:
            config_path = originals[name] / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config.update(case.edits)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    copies = {}
    for name, release in [*PAIRS, REFUSED]:
        copies[name, release] = root / "fixed" / f"{name}@{release}"
        shutil.copytree(originals[name], copies[name, release])
    refused_config = copies[REFUSED] / "adapter_config.json"
    refused_before = (refused_config.read_bytes(), sorted(p.name for p in copies[REFUSED].iterdir()))
    with ThreadPoolExecutor(8) as pool:
        runs = dict(zip(copies, pool.map(lambda key: run_fix(copies[key], key[1]), copies)))

    specs = {}
    for loader in [INSTALLED, *RELEASES]:
        if loader == INSTALLED:  # the newest peft with the original, unfixed configs
            jobs = [[name, str(directory), None] for name, directory in originals.items()]
        else:
            jobs = [[f"fixed/{name}", str(copies[name, r]), None] for name, r in PAIRS if r == loader]
            jobs += [[f"unfixed/{name}", str(directory), None] for name, directory in originals.items()]
            jobs += [[f"naive/{name}", str(originals[name]), ["use_rslora"]] for name in CASES]
        specs[loader] = root / f"spec-{loader}.json"
        specs[loader].write_text(json.dumps({"base": str(base), "input_ids": INPUT_IDS, "jobs": jobs}))
    with ThreadPoolExecutor(len(specs)) as pool:
        outcomes = dict(zip(specs, pool.map(lambda loader: logits_in(loader, specs[loader]), specs)))
    return World(base, originals, {pair: runs[pair] for pair in PAIRS}, runs[REFUSED], refused_before, outcomes)


def newest(world: World, name: str) -> dict[str, Any]:
    job = world.outcomes[INSTALLED]["jobs"][name]
    assert job["ok"], f"the installed peft cannot load its own {name} adapter: {job}"
    return job


def job_in(world: World, release: str, name: str) -> dict[str, Any]:
    return world.outcomes[release]["jobs"][name]


def close(a: Any, b: Any) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=RTOL)


def max_diff(a: Any, b: Any) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


# ------------------------------------------------------------------ the environments are what they say


@pytest.mark.parametrize("release", RELEASES)
def test_each_env_runs_its_release_on_the_same_base(world: World, release: str) -> None:
    outcome = world.outcomes[release]
    assert outcome["peft"] == release
    installed = world.outcomes[INSTALLED]
    assert close(outcome["base"], installed["base"]), (
        f"base logits differ between transformers {outcome['transformers']} ({outcome['base_loaded_by']}) "
        f"and {installed['transformers']}: max |diff| {max_diff(outcome['base'], installed['base'])}")


@pytest.mark.parametrize("name", list(CASES))
def test_each_adapter_changes_the_base_output(world: World, name: str) -> None:
    """Far beyond the tolerance (the adapters move the logits by about 0.07-0.3), so equality means something."""
    assert max_diff(newest(world, name)["logits"], world.outcomes[INSTALLED]["base"]) > 100 * ATOL


# ------------------------------------------------------------------ the fix: exit 0, same computation


@pytest.mark.parametrize(("name", "release"), PAIRS, ids=[f"{n}@{r}" for n, r in PAIRS])
def test_fixed_config_computes_what_the_newest_peft_computes(world: World, name: str, release: str) -> None:
    fixed = world.fixed[name, release]
    assert fixed.returncode == 0, f"fix {name} --peft {release} exited {fixed.returncode}:\n{fixed.output}"
    job = job_in(world, release, f"fixed/{name}")
    config = (fixed.directory / "adapter_config.json").read_text()
    assert job["ok"], f"peft {release} cannot load the fixed config: {job['error_type']}: {job['error']}\n{config}"
    want = newest(world, name)
    assert job["scalings"] == pytest.approx(want["scalings"], rel=1e-9), config
    assert close(job["logits"], want["logits"]), (
        f"peft {release} computes something else with the fixed config: max |diff| "
        f"{max_diff(job['logits'], want['logits'])}\n{config}")


@pytest.mark.parametrize(("name", "release"), PAIRS, ids=[f"{n}@{r}" for n, r in PAIRS])
def test_unfixed_newest_config_fails_to_load(world: World, name: str, release: str) -> None:
    job = job_in(world, release, f"unfixed/{name}")
    assert not job["ok"]
    assert job["error_type"] == "TypeError" and "unexpected keyword argument" in job["error"], job


@pytest.mark.parametrize(("name", "release"), RSLORA_PAIRS, ids=[f"{n}@{r}" for n, r in RSLORA_PAIRS])
def test_without_the_rslora_scaling_the_outputs_differ(world: World, name: str, release: str) -> None:
    """Deleting use_rslora by hand (with the keys X does not know) loads, but computes something else."""
    job = job_in(world, release, f"naive/{name}")
    assert job["ok"], job
    assert max_diff(job["logits"], newest(world, name)["logits"]) > 100 * ATOL


def test_all_linear_cannot_be_kept_for_0_6_2(world: World) -> None:
    """0.6.2 reads 'all-linear' as a module name pattern that matches nothing: it must be spelled out."""
    for name in ("all-linear", "rslora-all-linear-exclude"):
        job = job_in(world, "0.6.2", f"naive/{name}")
        assert not job["ok"] and "all-linear" in job["error"], job
    fixed = world.fixed["all-linear", "0.6.2"]
    assert fixed.returncode == 0, fixed.output
    target_modules = json.loads((fixed.directory / "adapter_config.json").read_text())["target_modules"]
    assert isinstance(target_modules, list) and len(target_modules) == 14, target_modules  # 7 per layer


# ------------------------------------------------------------------ refused: DoRA for 0.6.2


def test_dora_for_0_6_2_is_refused_and_nothing_is_written(world: World) -> None:
    refused = world.refused
    assert refused.returncode == 1, refused.output
    assert re.search(r"REFUSE\s+use_dora\b", refused.output), refused.output
    config_bytes, names = world.refused_before
    assert (refused.directory / "adapter_config.json").read_bytes() == config_bytes
    assert sorted(p.name for p in refused.directory.iterdir()) == names  # no backup, no temporary file


def test_dora_unfixed_fails_in_0_6_2(world: World) -> None:
    job = job_in(world, "0.6.2", "unfixed/dora")
    assert not job["ok"] and job["error_type"] == "TypeError", job
