"""The predicted load result equals what real peft releases do with the same file.

Configs are written by real peft (the installed release, and old releases side by side); each is
then loaded by each release in its own environment, and the outcome is compared with `check`'s
compatibility entry for that release: result, error text and dropped keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peftdoctor import check
from peftdoctor.peft.releases import installed_peft
from tests.in_release import outcomes, version_of, written_by_releases

# 0.3.0 ignores unknown keys silently, 0.6.2 and 0.13.2 raise TypeError, the installed one warns.
OLD_RELEASES = ["0.3.0", "0.6.2", "0.13.2"]
LOADERS = OLD_RELEASES + ["installed"]

WRITTEN = {  # name: (writer release, config class, kwargs)
    "lora-plain": ("installed", "LoraConfig", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "lora-dora": ("installed", "LoraConfig", {"r": 4, "target_modules": ["q_proj"], "use_dora": True}),
    "lora-rslora-pattern": ("installed", "LoraConfig", {"r": 8, "target_modules": ["q_proj"], "use_rslora": True,
                                                         "rank_pattern": {"q_proj": 4}}),
    "ia3": ("installed", "IA3Config", {"target_modules": ["k_proj"], "feedforward_modules": []}),
    "prompt-tuning": ("installed", "PromptTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 4}),
    "lora-by-0.13.2": ("0.13.2", "LoraConfig", {"r": 4, "target_modules": ["q_proj"], "use_dora": True}),
    "lora-by-0.6.2": ("0.6.2", "LoraConfig", {"r": 4, "target_modules": ["q_proj"]}),
    "oft-by-0.13.2": ("0.13.2", "OFTConfig", {"r": 8, "target_modules": ["q_proj"]}),
    "lora-by-0.3.0": ("0.3.0", "LoraConfig", {"r": 4, "target_modules": ["q_proj"]}),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each config saved by its writer release."""
    out = {name: tmp_path_factory.mktemp(name) for name in WRITTEN}
    written_by_releases(out, WRITTEN)
    return out


@pytest.fixture(scope="module")
def real_outcomes(written: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{loader: {directory: outcome}}, each loader release loading every config in one process."""
    return outcomes(LOADERS, "load_config.py", written.values())


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", list(WRITTEN))
def test_prediction_matches_real_load(written: dict[str, Path], real_outcomes: dict[str, dict[str, Any]],
                                      name: str, loader: str) -> None:
    directory = written[name]
    predicted = {c.peft: c for c in check(str(directory)).compatibility}[version_of(loader)]
    real = real_outcomes[loader][str(directory)]
    assert predicted.result == real["result"], (predicted, real)
    assert predicted.error == real["error"]
    assert sorted(predicted.dropped) == sorted(real["dropped"])
    if predicted.warning:
        assert any(predicted.warning in w for w in real["warnings"]), (predicted.warning, real["warnings"])


def test_the_releases_cover_every_unknown_key_behaviour() -> None:
    """The comparison above means little unless the loaders raise, warn and ignore between them."""
    from peftdoctor.peft import releases

    modes = {releases.load(releases.parse_version(v)).unknown_keys
             for v in OLD_RELEASES + [installed_peft()]}
    assert modes == {"raise", "warn", "ignore"}
