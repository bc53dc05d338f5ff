"""--max-lora-rank N (check, fix, prepare): PD408 says what vLLM's own validation does with a server started
with N. vLLM 0.34.0's PEFTHelper.validate_legal, from the released wheel (tests/test_engine_tables.py imports
it with its two vLLM imports stubbed), is handed a LoRAConfig-like object whose max_lora_rank is N."""
from __future__ import annotations

import types

import pytest

from peftdoctor.engines import _hits, applicable, parse_target, require_settings
from peftdoctor.errors import UsageError
from tests.test_engine_tables import _peft_helper

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
