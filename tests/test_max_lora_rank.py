"""--max-lora-rank N (check, fix, prepare): PD408 says what the engine's own validation does with a server
started with N. vLLM 0.34.0's PEFTHelper.validate_legal, from the released wheel (tests/test_engine_tables.py
imports it with its two vLLM imports stubbed), is handed a LoRAConfig-like object whose max_lora_rank is N;
SGLang 0.5.23's LoRAMemoryPool.can_support runs from its wheel (tests/sglang_pool.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from peftdoctor.engines import _hits, applicable, parse_target, require_settings
from peftdoctor.errors import UsageError
from tests.test_engine_tables import _peft_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import engine_envs  # noqa: E402

BASE = {"peft_type": "LORA", "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TARGET = parse_target("vllm==0.34.0")


def _vllm_refuses(helper: type, rank: int, limit: int) -> bool:
    try:
        helper.from_dict({**BASE, "r": rank}).validate_legal(types.SimpleNamespace(max_lora_rank=limit))
    except ValueError as error:
        assert str(error) == f"LoRA rank {rank} is greater than max_lora_rank {limit}."
        return True
    return False


def test_pd408_follows_the_servers_limit_as_vllm_does(monkeypatch: pytest.MonkeyPatch) -> None:
    helper = _peft_helper("0.34.0", monkeypatch)
    entries = applicable(TARGET)[2]
    for limit in (1, 8, 16, 64, 512):
        require_settings(TARGET, {"max_lora_rank": limit})  # a limit vLLM 0.34.0 starts with
        for rank in (1, 4, 8, 16, 17, 64, 300, 512, 600):
            hits = [e.feature for e, _ in _hits(entries, {**BASE, "r": rank}, None, settings={"max_lora_rank": limit})
                    if e.feature.startswith("rank_above")]
            assert bool(hits) == _vllm_refuses(helper, rank, limit), (rank, limit, hits)
    # Without the setting, the default the table cites (16) is what vLLM is handed by default.
    default = [e.feature for e, _ in _hits(entries, {**BASE, "r": 17}, None) if e.feature.startswith("rank_above")]
    assert default and _vllm_refuses(helper, 17, 16)


@pytest.mark.parametrize("limit", [2, 24, 1024])
def test_a_limit_the_release_cannot_start_with_is_a_usage_error(limit: int) -> None:
    with pytest.raises(UsageError, match=rf"--max-lora-rank {limit}: vLLM 0.34.0 does not start with it"):
        require_settings(TARGET, {"max_lora_rank": limit})


def test_pd408_follows_sglangs_memory_pool_for_a_given_limit(tmp_path: Path) -> None:
    """SGLang (0.4.10 on) refuses an adapter whose r exceeds its --max-lora-rank (LoRAMemoryPool.can_support,
    run from the released wheel by tests/sglang_pool.py); without the flag it sizes the pool from the adapters
    given at start-up, so PD408 is said only for a limit the user names."""
    ranks, limits = (1, 8, 16, 17, 64, 300), (8, 16, 64, 512)
    adapters = {}
    for rank in ranks:
        directory = tmp_path / f"r{rank}"
        directory.mkdir()
        (directory / "adapter_config.json").write_text(json.dumps({**BASE, "r": rank}))
        adapters[str(rank)] = str(directory)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(engine_envs.ensure("sglang", "0.5.23"))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sglang_pool.py"),
                           json.dumps({"limits": limits, "adapters": adapters})],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    supported = json.loads(done.stdout)
    target = parse_target("sglang==0.5.23")
    entries = applicable(target)[2]
    for rank in ranks:
        for limit in limits:
            hits = [e.id for e, _ in _hits(entries, {**BASE, "r": rank}, None, settings={"max_lora_rank": limit})
                    if e.feature.startswith("rank_above")]
            assert bool(hits) == (not supported[f"{rank},{limit}"]), (rank, limit, hits)
        assert not [e for e, _ in _hits(entries, {**BASE, "r": rank}, None) if e.feature.startswith("rank_above")]
    assert not [e for e in applicable(parse_target("sglang==0.4.9"))[2] if e.feature.startswith("rank_above")]
