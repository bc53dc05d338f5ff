"""TGI parses adapter_config.json with the peft its release installs (engines/tgi.json `peft_pins`, read from
server/requirements_cuda.txt or server/pyproject.toml at each tag): `check --target tgi==X` judges for that
peft unless --peft says otherwise (PD457 says which), and `fix --target tgi==X --out` writes a copy that
peft loads. Each claim is first shown with the pinned peft release itself (its side-by-side environment)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftdoctor import check
from peftdoctor.engines import PeftPin, _requirement, parse_target, peft_pin
from peftdoctor.ops.fix_copy import fix_copy
from peftdoctor.peft.releases import known_versions
from tests.adapters import make_llama_base, make_lora_adapter
from tests.in_release import run_in

# TGI 2.4.0 pins peft ^0.10 (0.10.0, whose LoraConfig raises on keys it does not know); TGI 3.3.7 pins 0.15.2,
# which ignores them with a warning.
OLD_TGI, OLD_PEFT = "tgi==2.4.0", "0.10.0"
NEW_TGI, NEW_PEFT = "tgi==3.3.7", "0.15.2"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real adapter saved by the installed peft: its config holds keys neither pinned peft knows."""
    root = tmp_path_factory.mktemp("pin")
    return make_lora_adapter(root / "lora", make_llama_base(root / "base"), base_model_name_or_path="tiny/llama")


def loaded(release: str, directory: Path) -> dict:
    return json.loads(run_in(release, "load_config.py", str(directory)))[str(directory)]


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


def test_the_pins_resolve_to_known_releases() -> None:
    known = known_versions()
    assert peft_pin(parse_target(OLD_TGI), known) == PeftPin("TGI 2.4.0", "^0.10", OLD_PEFT)
    assert peft_pin(parse_target(NEW_TGI), known) == PeftPin("TGI 3.3.7", "0.15.2", NEW_PEFT)
    assert peft_pin(parse_target("tgi==3.0.2"), known).release == "0.14.0"  # ">=0.14.0": the release it was written for
    assert peft_pin(parse_target("vllm==0.11.0"), known) is None  # vLLM reads the config itself (PEFTHelper)
    assert str(_requirement("^0.13.2")) == "<0.14,>=0.13.2" and str(_requirement("^1.2")) == "<2,>=1.2"


def test_check_for_old_tgi_predicts_what_its_peft_does(fresh: Path) -> None:
    real = loaded(OLD_PEFT, fresh)
    assert real["result"] == "fails" and "unexpected keyword argument" in real["error"], real
    report = check(str(fresh), serve=OLD_TGI)
    assert report.peft_target == OLD_PEFT and "PD457" in codes(report)
    judged = {c.peft: c for c in report.compatibility}[OLD_PEFT]
    assert judged.result == "fails", judged
    newest = check(str(fresh), serve=OLD_TGI, peft="0.21.2")  # --peft wins, and the note says so
    assert newest.peft_target == "0.21.2"
    assert any(f.code == "PD457" and "as --peft asks" in f.message for f in newest.findings), newest.findings


def test_check_for_new_tgi_names_the_keys_its_peft_ignores(fresh: Path) -> None:
    real = loaded(NEW_PEFT, fresh)
    assert real["result"] == "drops_keys", real
    report = check(str(fresh), serve=NEW_TGI)
    assert report.peft_target == NEW_PEFT
    dropped = next(f for f in report.findings if f.code == "PD107")
    assert all(key in dropped.message for key in real["dropped"] if key != "peft_version"), dropped.message


@pytest.mark.parametrize(("engine", "release"), [(OLD_TGI, OLD_PEFT), (NEW_TGI, NEW_PEFT)])
def test_fix_out_for_tgi_writes_what_its_peft_loads(fresh: Path, tmp_path: Path, engine: str, release: str) -> None:
    made = fix_copy(fresh, tmp_path / "served", serve=engine)
    assert made.written and made.plan.target == release, made.errors
    assert loaded(release, made.out) == {"result": "ok", "error": None, "dropped": [], "warnings": []}
    assert (fresh / "adapter_config.json").read_bytes() != (made.out / "adapter_config.json").read_bytes()
