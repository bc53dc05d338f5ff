"""Regressions from issue 14's outside test pass: fix never changes meaning, writes only standard JSON,
is idempotent, never ends in an internal error, and stays linear in the number of keys.

Each input is the one the pass reported, applied to the real tiny fixture adapter (its weights name
the modules the folds need).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftdoctor.ops import fix as fixing
from tests.adapters import edited_copy

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"


def adapter(tmp_path: Path, **changes: Any) -> Path:
    return edited_copy(CLEAN, tmp_path / "adapter", changes, indent=2, newline=True)  # a surrogate as its escape


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT)


def strict(text: str) -> Any:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def one_line_refusal(result: subprocess.CompletedProcess, key: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert any(line.strip().startswith(f"REFUSE  {key}:") for line in result.stdout.splitlines()), result.stdout


@pytest.mark.parametrize("changes", [
    {"use_rslora": True, "r": 10**400, "lora_alpha": 8},  # OverflowError: int too large to convert to float
    {"use_rslora": True, "r": 4, "lora_alpha": 10**400},
    {"use_rslora": True, "r": 4, "lora_alpha": 1e308},  # folded to Infinity, which strict readers reject
    {"use_rslora": True, "r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 10**400}},  # the rank_pattern fold
    {"use_rslora": True, "r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": "x"}},  # TypeError: must be real number
    {"use_rslora": True, "r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": -4}},  # ValueError: math domain error
    {"use_rslora": True, "r": 4, "lora_alpha": 8, "alpha_pattern": {"q_proj": 1e308}},  # Infinity in a pattern
], ids=["huge-r", "huge-alpha", "alpha-1e308", "huge-pattern-rank", "str-pattern-rank", "negative-pattern-rank",
        "pattern-alpha-1e308"])
def test_rslora_fold_refuses_what_has_no_finite_json_value(tmp_path: Path, changes: dict[str, Any]) -> None:
    target = adapter(tmp_path, **changes)
    before = (target / "adapter_config.json").read_bytes()
    one_line_refusal(cli("fix", str(target), "--peft", "0.6.2"), "use_rslora")
    assert (target / "adapter_config.json").read_bytes() == before


def test_nan_kept_from_the_original_is_never_written(tmp_path: Path) -> None:
    target = adapter(tmp_path, lora_dropout=float("nan"))
    assert "NaN" in (target / "adapter_config.json").read_text()
    result = cli("fix", str(target), "--peft", "0.13.2")  # the 17 no-op keys would be dropped
    one_line_refusal(result, "lora_dropout")
    assert "NaN" in result.stdout
    forced = cli("fix", str(target), "--peft", "0.13.2", "--force")
    assert forced.returncode == 0 and "FORCED" in forced.stdout
    assert "lora_dropout" not in strict((target / "adapter_config.json").read_text())


def test_regex_target_modules_is_not_turned_into_a_list(tmp_path: Path) -> None:
    """peft 0.1.0 takes only a list; a list of suffixes matches differently from the regex."""
    target = adapter(tmp_path, target_modules=r".*\.q_proj")
    one_line_refusal(cli("fix", str(target), "--peft", "0.1.0"), "target_modules")
    plan = fixing.plan(str(target), peft="0.1.0", force=True)
    change = next(c for c in plan.changes if c.key == "target_modules")
    assert change.forced and change.reason.startswith("FORCED") and "target_modules" not in plan.result
    forced = cli("fix", str(target), "--peft", "0.1.0", "--force")
    assert "FORCED: peft 0.1.0 does not accept target_modules" in forced.stdout
    assert "target_modules" not in json.loads((target / "adapter_config.json").read_text())
    # written as asked, and the re-check says what the forced drop costs: no module targets the weights any more
    assert forced.returncode == 1 and "still broken for peft 0.1.0" in forced.stdout and "PD208" in forced.stdout


def test_rslora_for_vllm_0_6_3_is_folded_never_dropped(tmp_path: Path) -> None:
    target = adapter(tmp_path, use_rslora=True, r=4, lora_alpha=16)  # r as the fixture's weights hold it
    done = cli("fix", str(target), "--peft", "0.12.0", "--target", "vllm==0.6.3")
    assert done.returncode == 0, done.stdout + done.stderr
    config = strict((target / "adapter_config.json").read_text())
    assert "use_rslora" not in config
    assert math.isclose(config["lora_alpha"] / config["r"], 16 / math.sqrt(4), rel_tol=1e-12)


def test_fix_says_what_no_rewrite_repairs(tmp_path: Path) -> None:
    """The same rewrite on a config whose r disagrees with the weights: written, but fix says it still fails."""
    target = adapter(tmp_path, use_rslora=True, r=8, lora_alpha=16)
    done = cli("fix", str(target), "--peft", "0.12.0", "--target", "vllm==0.6.3")
    assert done.returncode == 1 and "still broken for peft 0.12.0" in done.stdout and "PD206" in done.stdout
    assert "use_rslora" not in strict((target / "adapter_config.json").read_text())  # the exact part is written


def test_forced_engine_refusal_is_idempotent(tmp_path: Path) -> None:
    """Found by the property test: vLLM refuses per-module scales under the name rank_pattern; --force
    dropped rank_pattern only, and the second run refused again for the alpha_pattern left behind."""
    target = adapter(tmp_path, alpha_pattern={"q_proj": 1}, rank_pattern={})
    first = cli("fix", str(target), "--peft", "0.6.2", "--target", "vllm==0.6.3", "--force")
    assert first.returncode == 0, first.stdout
    config = strict((target / "adapter_config.json").read_text())
    assert "alpha_pattern" not in config and "rank_pattern" not in config
    assert "FORCED" in first.stdout
    second = cli("fix", str(target), "--peft", "0.6.2", "--target", "vllm==0.6.3", "--force",
                 "--backup-suffix", ".second")
    assert second.returncode == 0 and "nothing to change" in second.stdout, second.stdout
    again = fixing.plan(str(target), peft="0.6.2", serve="vllm==0.6.3")
    assert not again.refused and not again.changed


def test_lone_surrogate_is_written_as_its_escape(tmp_path: Path) -> None:
    target = adapter(tmp_path, base_model_name_or_path="\ud800", **{"\udc00x": True})
    checked = cli("check", str(target), "--peft", "0.13.2")
    assert checked.returncode == 1 and "internal error" not in checked.stderr and "\\udc00x" in checked.stdout
    fixed = cli("fix", str(target), "--peft", "0.13.2", "--force")
    assert fixed.returncode == 0 and "internal error" not in fixed.stderr, fixed.stderr
    raw = (target / "adapter_config.json").read_bytes()
    config = strict(raw.decode("utf-8"))  # valid UTF-8: the surrogate is the JSON escape it was read from
    assert config["base_model_name_or_path"] == "\ud800" and b'"\\ud800"' in raw


def test_deeply_nested_unknown_value_is_a_finding_not_a_recursion_error(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    nested = "[" * 979 + "]" * 979
    text = (target / "adapter_config.json").read_text().rstrip()[:-1] + f', "deep": {nested}}}\n'
    (target / "adapter_config.json").write_text(text)
    result = cli("check", str(target), "--peft", "0.21.2")
    assert result.returncode in (0, 1) and "internal error" not in result.stderr, result.stderr
    assert "deep" in result.stdout


@pytest.mark.parametrize("count, force", [(950, False), (950, True)])
def test_many_unknown_keys_are_linear(tmp_path: Path, count: int, force: bool) -> None:
    """Just under the key cap (io/limits.py): refusals are kept in a set, so the plan stays linear."""
    target = adapter(tmp_path, **{f"unknown_key_{i}": i for i in range(count)})
    plan = fixing.plan(str(target), peft="0.13.2", force=force)
    assert len(plan.refusals if not force else [c for c in plan.changes if c.forced]) == count


@pytest.mark.parametrize("count", [64_000, 256_000])
def test_configs_over_the_key_cap_are_refused_at_once(tmp_path: Path, count: int) -> None:
    """Was > 60 s for 64,000 keys (quadratic) and over 15 minutes for 256,000: now one line, nothing judged."""
    target = adapter(tmp_path, **{f"unknown_key_{i}": i for i in range(count)})
    done = cli("fix", str(target), "--peft", "0.13.2", "--force")
    assert done.returncode == 2 and "cap" in done.stderr and len(done.stderr.strip().splitlines()) == 1
