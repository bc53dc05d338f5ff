"""Config against weights, on adapters made by real peft and on files corrupted on purpose."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftdoctor import check
from tests.adapters import edited_copy, make_zoo, write_safetensors_header

HUB_ID = "peftdoctor-tests/tiny-base"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_zoo(tmp_path_factory.mktemp("zoo"), base_model_name_or_path=HUB_ID)


def codes(path: Path, peft: str = "0.21.2") -> list[str]:
    return [f.code for f in check(str(path), peft=peft).findings]


def edited(src: Path, dst: Path, **changes: object) -> Path:
    return edited_copy(src, dst, changes)


ADAPTERS = ["lora-llama", "lora-gpt2", "rslora-llama", "dora-llama", "pattern-llama", "modules-to-save-bert",
            "ia3-llama", "loha-llama", "prompt-tuning-llama", "prefix-tuning-llama"]


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_made_by_real_peft_are_clean(zoo: dict[str, Path], name: str) -> None:
    report = check(str(zoo[name]), peft="0.21.2")
    assert [f for f in report.findings if f.severity.value != "info"] == [], report.findings
    assert report.compatibility[-1].result == "ok"


def test_rank_mismatch(zoo: dict[str, Path], tmp_path: Path) -> None:
    assert "PD206" in codes(edited(zoo["lora-llama"], tmp_path / "a", r=8))


def test_rank_pattern_is_honoured_and_checked(zoo: dict[str, Path], tmp_path: Path) -> None:
    assert "PD206" not in codes(zoo["pattern-llama"])
    assert "PD206" in codes(edited(zoo["pattern-llama"], tmp_path / "a", rank_pattern={}))


def test_target_modules_against_weights(zoo: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((zoo["lora-llama"] / "adapter_config.json").read_text())
    extra = edited(zoo["lora-llama"], tmp_path / "extra", target_modules=config["target_modules"] + ["gate_proj"])
    assert "PD207" in codes(extra)
    fewer = edited(zoo["lora-llama"], tmp_path / "fewer", target_modules=config["target_modules"][:1])
    assert "PD208" in codes(fewer)


def test_modules_to_save_missing(zoo: dict[str, Path], tmp_path: Path) -> None:
    assert "PD209" in codes(edited(zoo["modules-to-save-bert"], tmp_path / "a",
                                   modules_to_save=["classifier", "pooler"]))


def test_dora_flag_against_magnitudes(zoo: dict[str, Path], tmp_path: Path) -> None:
    assert "PD210" in codes(edited(zoo["dora-llama"], tmp_path / "a", use_dora=False))
    assert "PD210" in codes(edited(zoo["lora-llama"], tmp_path / "b", use_dora=True))


def test_weights_missing_and_both_formats(zoo: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(zoo["lora-llama"] / "adapter_config.json", bare)
    assert "PD201" in codes(bare)
    both = tmp_path / "both"
    shutil.copytree(zoo["lora-llama"], both)
    (both / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle; must never be unpickled
    found = codes(both)
    assert "PD202" in found and "PD203" in found


@pytest.mark.parametrize("corruption, code", [
    ({"truncate": 5}, "PD204"),
    ({"lie_header_len": 10_000}, "PD204"),
    ({"raw_header": b"{not json"}, "PD204"),
    ({"max_data": 10}, "PD205"),
    ({"offsets": {"base_model.model.x.lora_A.weight": (0, 3)}}, "PD205"),
])
def test_corrupt_headers(zoo: dict[str, Path], tmp_path: Path, corruption: dict, code: str) -> None:
    target = tmp_path / "adapter"
    shutil.copytree(zoo["lora-llama"], target)
    write_safetensors_header(target / "adapter_model.safetensors",
                             {"base_model.model.x.lora_A.weight": ("F32", [4, 16])}, **corruption)
    assert code in codes(target)


def test_tied_layer_uses_the_base_config_when_it_is_at_hand(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["lm_head"], "base_model_name_or_path": str(base)}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    for tie, expected in ((True, True), (False, False)):
        (base / "config.json").write_text(json.dumps({"tie_word_embeddings": tie}))
        found = [f for f in check(str(adapter), peft="0.21.2").findings if f.code == "PD115"]
        assert bool(found) is expected
