"""The transformers axis (peft/transformers_axis.py, PD380-PD382, PD229) next to what real peft + real transformers do.

Releases run side by side (scripts/transformers_envs.py: a peft-only directory and a transformers directory first
on PYTHONPATH; the CI set is transformers_envs.CI_TRANSFORMERS / CI_PEFT, the base venv's 5.25.0 and 0.21.2 need
none). Tiny real adapters are written and loaded by scripts/axis/application_probe.py, the same code the
generator measured the committed table with: here it runs again, and check's prediction from the committed table
must agree with this fresh run (outcome, and which modules got no weights), logits included.

Cost (measured on the shared 2-core machine): the module runs 11 processes (2 writers, 5 loading pairs, 2 import
probes, 2 generator re-runs): 73 s when the machine was quiet, 8 min under a load of 13. Marked `axis` so that
`-m "not axis"` leaves them out.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftdoctor import check
from peftdoctor.peft import architectures, transformers_axis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import transformers_envs  # noqa: E402

pytestmark = pytest.mark.axis
PROBE = ROOT / "scripts" / "axis" / "application_probe.py"
NEWEST = transformers_envs.base_transformers()


def run_pair(peft: str, transformers: str, *args: str) -> Any:
    """The JSON the application probe prints under the pair (the base venv's own peft for "installed")."""
    paths = transformers_envs.ensure_transformers(transformers)
    if peft != "installed":
        paths = [transformers_envs.ensure_peft(peft), *paths]
    env = transformers_envs.peft_envs.environ_for(paths)
    done = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixtral, Qwen2-MoE and Llava adapters written by peft 0.18.1 + transformers 4.57.6, and fused-expert
    Mixtral adapters by the installed peft + transformers (5.x, target_parameters)."""
    root = tmp_path_factory.mktemp("axis")
    run_pair("0.18.1", "4.57.6", "save", str(root), "4x", "mixtral", "qwen2_moe", "llava")
    run_pair("installed", NEWEST, "save", str(root), "5x", "mixtral")
    return root


@pytest.fixture(scope="module")
def loads(written: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What each pair of the CI set really does with every written adapter."""
    pairs = [("0.18.1", "5.5.4"), ("0.19.1", "5.5.4"), ("0.18.1", "5.12.1"), ("0.18.1", "4.57.6"),
             ("installed", NEWEST)]
    return {pair: run_pair(*pair, "load", str(written)) for pair in pairs}


def codes(report: Any) -> dict[str, str]:
    return {f.code: f.message for f in report.findings if f.code.startswith(("PD38", "PD229", "PD221"))}


def peft_of(release: str) -> str:
    from peftdoctor.peft.releases import installed_peft

    return installed_peft() if release == "installed" else release


# --------------------------------------------------------------------------- importing


def test_import_failures_agree_with_real_imports() -> None:
    """peft 0.14-0.15 need transformers >= 4.43 (EncoderDecoderCache); 0.16-0.17 do not import under 5.x
    (HybridCache); each checked by really importing the pair, against the committed table."""
    probe = ROOT / "scripts" / "axis" / "import_probe.py"
    for transformers, pefts in (("4.40.2", ("0.15.0", "0.13.2")), ("5.5.4", ("0.17.1", "0.19.1"))):
        dirs = {str(transformers_envs.ensure_peft(p)): p for p in pefts}
        env = transformers_envs.peft_envs.environ_for(transformers_envs.ensure_transformers(transformers))
        done = subprocess.run([sys.executable, str(probe), *dirs], capture_output=True, text=True, env=env, timeout=600)
        real = {dirs[d]: e for d, e in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        for peft, error in real.items():
            assert transformers_axis.import_failure(peft, transformers) == error, (peft, transformers)
    assert "EncoderDecoderCache" in transformers_axis.import_failure("0.15.0", "4.40.2")
    assert transformers_axis.import_failure("0.15.0", "4.43.3") is None
    assert "HybridCache" in transformers_axis.import_failure("0.17.1", "5.5.4")
    assert transformers_axis.import_failure("0.19.1", "5.5.4") is None


def test_check_names_the_import_failure_of_the_chosen_pair(tmp_path: Path) -> None:
    adapter = ROOT / "fixtures" / "tiny-llama-lora"
    failing = check(str(adapter), peft="0.15.0", transformers="4.40.2")
    assert "EncoderDecoderCache" in codes(failing)["PD380"] and failing.worst().value == "error"
    assert "PD380" not in codes(check(str(adapter), peft="0.15.0", transformers="4.45.2"))
    # --peft alone is judged for how it loads: no import verdict against this machine's transformers
    assert "PD380" not in codes(check(str(adapter), peft="0.15.0"))


def test_cli_transformers_option(tmp_path: Path) -> None:
    adapter = ROOT / "fixtures" / "tiny-llama-lora"
    done = subprocess.run([sys.executable, "-m", "peftdoctor", "check", str(adapter), "--peft", "0.16.0",
                           "--transformers", "5.12.1"], capture_output=True, text=True)
    assert done.returncode == 1 and "PD380" in done.stdout and "HybridCache" in done.stdout
    assert transformers_axis.choose("4.44.0") == ("4.43.3", "no tables for transformers 4.44.0; judged against "
                                                            "transformers 4.43.3")
    # a release without tables of its own is judged by the closest older one, and the report says so
    report = check(str(adapter), peft="0.16.0", transformers="5.13.0")
    assert "HybridCache" in codes(report)["PD380"] and "transformers 5.13.0" in report.skipped[-1]


# --------------------------------------------------------------------------- what a loaded adapter computes


def test_mixtral_trained_under_4x_is_partial_under_peft_018_and_transformers_5(written: Path, loads: dict) -> None:
    adapter = written / "mixtral" / "4x-attention_experts"
    real = loads[("0.18.1", "5.5.4")]["mixtral/4x-attention_experts"]
    # real peft 0.18.1 + transformers 5.5.4: no error, no warning, only the attention LoRA has weights
    assert real["outcome"] == "partial" and not real["warned_missing"]
    assert all("self_attn" in m for m in real["loaded"])
    predicted = codes(check(str(adapter), peft="0.18.1", transformers="5.5.4"))
    assert set(predicted) == {"PD381"}
    lost = sorted(set(real["saved"]) - set(real["loaded"]))
    assert lost == [f"model.layers.{{i}}.block_sparse_moe.experts.{{i}}.{w}" for w in ("w1", "w2", "w3")]
    assert all(m in predicted["PD381"] for m in lost) and "self_attn" not in predicted["PD381"]
    # from peft 0.19 the experts are converted (fused): the logits are the writer's base + adapter
    assert loads[("0.19.1", "5.5.4")]["mixtral/4x-attention_experts"]["outcome"] == "adapter"
    assert codes(check(str(adapter), peft="0.19.1", transformers="5.5.4")) == {}
    assert loads[("0.18.1", "4.57.6")]["mixtral/4x-attention_experts"]["outcome"] == "adapter"
    assert codes(check(str(adapter), peft="0.18.1", transformers="4.57.6")) == {}


def test_qwen2_moe_trained_under_4x_loses_its_routed_experts_under_every_5x_pair(written: Path, loads: dict) -> None:
    adapter = written / "qwen2_moe" / "4x-attention_experts"
    for pair in (("0.18.1", "5.5.4"), ("0.19.1", "5.5.4"), ("installed", NEWEST)):
        real = loads[pair]["qwen2_moe/4x-attention_experts"]
        assert real["outcome"] == "partial" and not real["warned_missing"], pair
        lost = set(real["saved"]) - set(real["loaded"])
        assert lost and all(".mlp.experts.{i}." in m for m in lost), pair  # the shared expert survives
        message = codes(check(str(adapter), peft=peft_of(pair[0]), transformers=pair[1]))["PD381"]
        assert all(m in message for m in lost) and "shared_expert" not in message, pair
    assert codes(check(str(adapter), peft="0.18.1", transformers="4.57.6")) == {}


def test_llava_vision_tower_trained_under_4x_loses_its_keys_under_peft_018_and_5_12(written: Path,
                                                                                      loads: dict) -> None:
    adapter = written / "llava" / "4x-language_vision"
    real = loads[("0.18.1", "5.12.1")]["llava/4x-language_vision"]
    predicted = codes(check(str(adapter), peft="0.18.1", transformers="5.12.1"))
    lost = sorted(set(real["saved"]) - set(real["loaded"]))
    if real["outcome"] == "adapter":
        assert predicted == {}
    else:
        assert lost and all("vision_tower" in m for m in lost)
        assert all(m in predicted["PD381"] for m in lost)


def test_fused_experts_saved_under_5x_fail_or_are_partial_under_4x(written: Path, loads: dict) -> None:
    adapter = written / "mixtral" / "5x-attention_fused_experts"
    real = loads[("0.18.1", "4.57.6")]["mixtral/5x-attention_fused_experts"]
    predicted = codes(check(str(adapter), peft="0.18.1", transformers="4.57.6"))
    if real["outcome"] == "fails":
        assert real["error"] in predicted["PD382"]
    else:
        assert real["outcome"] in ("partial", "base") and "PD381" in predicted
    assert loads[("installed", NEWEST)]["mixtral/5x-attention_fused_experts"]["outcome"] == "adapter"
    assert codes(check(str(adapter), transformers=NEWEST)) == {}


# --------------------------------------------------------------------------- target_parameters against the base


def test_target_parameters_against_the_bases_fused_experts(written: Path, tmp_path: Path) -> None:
    adapter = written / "mixtral" / "5x-attention_fused_experts"
    base = written / "mixtral" / "base"  # saved by transformers 4.57.6: the same config.json 5.x reads
    assert codes(check(str(adapter), base=str(base), transformers=NEWEST)) == {}
    # the installed peft loads it and computes it (test_fused_experts_...): no rank or stray-weight error either
    # (the wrappers hold r * experts rows of rank and match no target_modules entry)
    assert not {"PD206", "PD208"} & {f.code for f in check(str(adapter), transformers=NEWEST).findings}
    # transformers 4.x builds per-expert Linear modules: no parameter to adapt
    old = codes(check(str(adapter), base=str(base), peft="0.18.1", transformers="4.57.6"))
    assert "mlp.experts.gate_up_proj" in old["PD229"]
    # a base with other sizes: the saved expert LoRA does not fit
    config = json.loads((base / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "num_local_experts": 8, "intermediate_size": 48}))
    wrong = codes(check(str(adapter), base=str(other), transformers=NEWEST))
    assert "r * experts = 4 * 8" in wrong["PD221"]


def test_architecture_tables_per_release() -> None:
    """Mixtral's fused experts exist from transformers 5 on, Qwen2-MoE not at all in 4.36; shapes per release."""
    assert architectures.entry("mixtral", "4.57.6")["modules"].get("model.layers.{i}.block_sparse_moe.experts.{i}.w1")
    assert "parameters" not in architectures.entry("mixtral", "4.57.6")
    assert architectures.entry("mixtral", "5.5.4")["parameters"]
    assert architectures.entry("mixtral") == architectures.entry("mixtral", NEWEST)
    assert architectures.entry("qwen2_moe", "4.36.2") is None


def test_generated_tables_reproduce_under_the_real_releases() -> None:
    """Entries of architectures_axis.json and of the renames section, made again by the generator's own scripts
    under the release they describe, equal the committed ones."""
    env = transformers_envs.peft_envs.environ_for(transformers_envs.ensure_transformers("4.57.6"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_architectures.py"), "--stdout", "mixtral"],
                          capture_output=True, text=True, env=env, timeout=600)
    fresh = json.loads(done.stdout.strip().splitlines()[-1])["model_types"]["mixtral"]
    assert fresh == architectures.entry("mixtral", "4.57.6")
    env = transformers_envs.peft_envs.environ_for(transformers_envs.ensure_transformers("5.12.1"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "axis" / "renames_probe.py"), "llava", "mixtral"],
                          capture_output=True, text=True, env=env, timeout=600)
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    table = json.loads(Path(transformers_axis.TABLE).read_text())["renames"]["5.12.1"]
    assert fresh == {m: table[m] for m in ("llava", "mixtral")}
    # what renames() makes of them: a 4.x vision-tower path lands on 5.12.1's module under peft 0.21.2 (which
    # computes that adapter: the applications table), and stays as saved under peft 0.18.1 (which loses it)
    saved = "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
    assert renamed(saved, "0.21.2", "5.12.1", "llava") == "model.vision_tower.encoder.layers.0.self_attn.q_proj"
    assert renamed(saved, "0.18.1", "5.12.1", "llava") == saved


def renamed(path: str, peft: str, transformers: str, model_type: str) -> str:
    import re

    for rename in transformers_axis.renames(peft, transformers, model_type):
        path = re.sub(rename.pattern, rename.replacement, path)
    return path
