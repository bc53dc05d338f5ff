"""check --combine: the add_weighted_adapter conditions, predicted and confirmed with real peft."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.adapters import make_llama_base, make_lora_adapter

    root = tmp_path_factory.mktemp("combine")
    base = make_llama_base(root / "base")
    hub = {"base_model_name_or_path": "org/tiny-llama"}
    return {
        "base": base,
        "r4": make_lora_adapter(root / "r4", base, r=4, seed=1, **hub),
        "r4b": make_lora_adapter(root / "r4b", base, r=4, seed=2, **hub),
        "r8": make_lora_adapter(root / "r8", base, r=8, seed=3, **hub),
        "other-base": make_lora_adapter(root / "other", base, r=4, seed=4, base_model_name_or_path="org/other"),
    }


def combine(*dirs: Path, how: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "check", *map(str, dirs), "--combine", how,
                           "--format", "json", "--peft", "0.21.2"], capture_output=True, text=True, cwd=ROOT)
    return done.returncode, json.loads(done.stdout)["combination"]


def real_add_weighted(base: Path, dirs: list[Path], how: str) -> str:
    """What peft's add_weighted_adapter really says: 'ok' or the error text."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), dirs[0], adapter_name="a0")
    for i, d in enumerate(dirs[1:], 1):
        model.load_adapter(d, adapter_name=f"a{i}")
    try:
        model.add_weighted_adapter([f"a{i}" for i in range(len(dirs))], [1.0] * len(dirs), "mixed",
                                   combination_type=how)
    except ValueError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("names, how, possible, rank", [
    (["r4", "r4b"], "linear", True, 4),
    (["r4", "r8"], "linear", False, None),
    (["r4", "r8"], "cat", True, 12),
    (["r4", "r8"], "svd", True, 8),
])
def test_prediction_matches_add_weighted_adapter(adapters: dict[str, Path], names: list[str], how: str,
                                                 possible: bool, rank: int) -> None:
    code, combination = combine(*(adapters[n] for n in names), how=how)
    assert combination["possible"] is possible and combination["new_rank"] == rank
    assert code == (0 if possible else 1)
    real = real_add_weighted(adapters["base"], [adapters[n] for n in names], how)
    assert (real == "ok") is possible, real


def test_different_bases_are_refused(adapters: dict[str, Path]) -> None:
    code, combination = combine(adapters["r4"], adapters["other-base"], how="linear")
    assert code == 1 and [f["code"] for f in combination["findings"]] == ["PD504"]


def test_unknown_combination_type(adapters: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "check", str(adapters["r4"]), "--combine", "avg"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_a_rank_pattern_that_is_not_an_object_is_not_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "a"
    shutil.copytree(ROOT / "fixtures" / "tiny-llama-lora", target)
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps(dict(config, rank_pattern=True)))
    for extra in (["--combine", "linear", str(target)], ["--target", "vllm"]):
        done = subprocess.run([sys.executable, "-m", "peftdoctor", "check", str(target), *extra],
                              capture_output=True, text=True, cwd=ROOT)
        assert "internal error" not in done.stderr and done.returncode in (0, 1), done.stderr
