"""fix: the rewrite plan, idempotence, and never losing the user's file."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftdoctor.io.atomic import WriteRefused
from peftdoctor.ops import fix as fixing
from tests.adapters import edited_copy

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"


def adapter(tmp_path: Path, **changes: object) -> Path:
    return edited_copy(CLEAN, tmp_path / "adapter", changes, indent=2, sort_keys=True, newline=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True, timeout=60)


def test_rslora_is_folded_into_alpha(tmp_path: Path) -> None:
    plan = fixing.plan(str(adapter(tmp_path, use_rslora=True, r=4, lora_alpha=8)), peft="0.6.2")
    assert not plan.refused
    assert "use_rslora" not in plan.result
    assert plan.result["lora_alpha"] == 16  # 8 * sqrt(4): 16/4 == 8/sqrt(4)


def test_rslora_with_irrational_root(tmp_path: Path) -> None:
    # The fixture's weights have rank 4 but r is declared 8 here; the plan only does arithmetic.
    plan = fixing.plan(str(adapter(tmp_path, use_rslora=True, r=8, lora_alpha=16)), peft="0.6.2")
    assert math.isclose(plan.result["lora_alpha"] / 8, 16 / math.sqrt(8), rel_tol=1e-12)


def test_rslora_kept_where_the_target_knows_it(tmp_path: Path) -> None:
    plan = fixing.plan(str(adapter(tmp_path, use_rslora=True)), peft="0.13.2")
    assert plan.result["use_rslora"] is True and plan.result["lora_alpha"] == plan.original["lora_alpha"]


def test_dora_is_refused_for_a_release_without_it(tmp_path: Path) -> None:
    target = adapter(tmp_path, use_dora=True)
    before = (target / "adapter_config.json").read_bytes()
    result = cli("fix", str(target), "--peft", "0.6.2")
    assert result.returncode == 1 and "use_dora" in result.stdout
    assert (target / "adapter_config.json").read_bytes() == before
    assert not (target / "adapter_config.json.orig").exists()


def test_force_drops_with_a_warning(tmp_path: Path) -> None:
    plan = fixing.plan(str(adapter(tmp_path, use_dora=True)), peft="0.6.2", force=True)
    assert not plan.refused and any(c.forced and c.key == "use_dora" for c in plan.changes)


def test_legacy_keys_for_new_releases(tmp_path: Path) -> None:
    target = adapter(tmp_path, enable_lora=None, merge_weights=True)
    plan = fixing.plan(str(target), peft="0.21.2")
    assert not plan.refused and "merge_weights" not in plan.result and "enable_lora" not in plan.result
    fused = fixing.plan(str(adapter(tmp_path / "b", enable_lora=[True, False, True])), peft="0.21.2")
    assert [r.key for r in fused.refusals] == ["enable_lora"]


def test_all_linear_spelled_out_from_the_weights(tmp_path: Path) -> None:
    plan = fixing.plan(str(adapter(tmp_path, target_modules="all-linear")), peft="0.6.2")
    assert plan.result["target_modules"] == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert fixing.plan(str(adapter(tmp_path / "b", target_modules="all-linear")), peft="0.8.0").changed is True
    assert "target_modules" not in {c.key for c in
                                    fixing.plan(str(adapter(tmp_path / "c", target_modules="all-linear")),
                                                peft="0.8.0").changes}


def test_retyped_values(tmp_path: Path) -> None:
    plan = fixing.plan(str(adapter(tmp_path, init_lora_weights="gaussian")), peft="0.6.2")
    assert plan.result["init_lora_weights"] is True and not plan.refused


def test_key_order_layout_and_idempotence(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    order = list(json.loads((target / "adapter_config.json").read_text()))
    assert cli("fix", str(target), "--peft", "0.13.2").returncode == 0
    text = (target / "adapter_config.json").read_text()
    kept = [k for k in order if k in json.loads(text)]
    assert list(json.loads(text)) == kept and text.endswith("}\n") and '\n  "' in text
    assert (target / "adapter_config.json.orig").read_text() != text
    again = cli("fix", str(target), "--peft", "0.13.2", "--backup-suffix", ".second")
    assert again.returncode == 0 and "nothing to change" in again.stdout
    assert not (target / "adapter_config.json.second").exists()
    assert cli("check", str(target), "--peft", "0.13.2").returncode == 0


def test_check_mode_and_dry_run_write_nothing(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    before = (target / "adapter_config.json").read_bytes()
    assert cli("fix", str(target), "--peft", "0.13.2", "--check").returncode == 1
    assert cli("fix", str(target), "--peft", "0.13.2", "--dry-run", "--diff").returncode == 0
    assert (target / "adapter_config.json").read_bytes() == before
    assert cli("fix", str(target), "--peft", "0.21.2", "--check").returncode == 0


def test_existing_backup_is_not_overwritten(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    (target / "adapter_config.json.orig").write_text("mine")
    before = (target / "adapter_config.json").read_bytes()
    result = cli("fix", str(target), "--peft", "0.13.2")
    assert result.returncode == 2 and "already exists" in result.stderr and result.stderr.count("\n") == 1
    assert (target / "adapter_config.json").read_bytes() == before
    assert (target / "adapter_config.json.orig").read_text() == "mine"


def test_file_changed_between_read_and_write(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    plan = fixing.plan(str(target), peft="0.13.2")
    (target / "adapter_config.json").write_text((target / "adapter_config.json").read_text() + " ")
    with pytest.raises(WriteRefused, match="changed since it was read"):
        fixing.apply(plan)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_read_only_directory(tmp_path: Path) -> None:
    target = adapter(tmp_path)
    target.chmod(0o555)
    try:
        result = cli("fix", str(target), "--peft", "0.13.2")
        assert result.returncode == 2 and "not writable" in result.stderr
    finally:
        target.chmod(0o755)


def test_read_only_directory_as_root_is_reported_via_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores permission bits, so the not-writable branch is reached by making os.access say no."""
    target = adapter(tmp_path)
    plan = fixing.plan(str(target), peft="0.13.2")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(WriteRefused, match="not writable"):
        fixing.apply(plan)


KILLER = """
import sys
from peftdoctor.io.atomic import Snapshot, replace_text
from pathlib import Path
path = Path(sys.argv[1])
big = Path(sys.argv[2]).read_text()
first = True
while True:  # rewrite forever, alternating old and new contents, until killed
    text = path.read_text()
    replace_text(path, big if text != big else text[:-1] + " ", Snapshot.of(path), None)
    if first:  # the parent times its kill from here, not from the start (imports are slow on a busy machine)
        print("ready", flush=True)
        first = False
"""


def test_kill_during_writes_never_leaves_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    config = {"peft_type": "LORA", "r": 8, "target_modules": [f"model.layers.{i}.mlp.proj_{j}"
                                                              for i in range(400) for j in range(50)]}
    big = json.dumps(config, indent=2) + "\n"  # ~1.5 MB: a write takes long enough to be interrupted
    path.write_text(big)
    source = tmp_path.parent / f"{tmp_path.name}-big.txt"
    source.write_text(big)
    interrupted = 0
    killed: list[int] = []
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(path), str(source)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep((attempt % 7) * 0.013)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.append(proc.pid)
        text = path.read_text()
        assert text in (big, big[:-1] + " "), f"attempt {attempt}: torn file of {len(text)} bytes"
        assert json.loads(text)["r"] == 8
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "adapter_config.json"]
        # Only our temporary files, never the target; a later run sweeps them (a dead pid's), unless it is
        # killed before it gets there.
        assert all(name.startswith(tuple(f".adapter_config.json.{pid}-" for pid in killed)) for name in leftovers), \
            leftovers
        interrupted += any(name.startswith(f".adapter_config.json.{proc.pid}-") for name in leftovers)
    # Abandoned temporary files prove some kills landed mid-write (about one in four does).
    assert interrupted, "no kill interrupted a write; the test proved nothing"


def test_fix_for_a_serving_engine_folds_rslora_even_where_peft_knows_it(tmp_path: Path) -> None:
    target = adapter(tmp_path, use_rslora=True, r=4, lora_alpha=8)
    before = cli("check", str(target), "--peft", "0.21.2", "--target", "sglang", "--format", "json")
    assert "PD404" in {f["code"] for f in json.loads(before.stdout)["findings"]}
    assert fixing.plan(str(target), peft="0.21.2").changed is False  # peft alone needs nothing
    assert cli("fix", str(target), "--peft", "0.21.2", "--target", "sglang").returncode == 0
    config = json.loads((target / "adapter_config.json").read_text())
    assert "use_rslora" not in config and config["lora_alpha"] == 16
    after = cli("check", str(target), "--peft", "0.21.2", "--target", "sglang", "--format", "json")
    assert after.returncode == 0 and "PD404" not in after.stdout


def test_fix_for_a_serving_engine_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    target = adapter(tmp_path, use_dora=True)
    done = cli("fix", str(target), "--peft", "0.21.2", "--target", "vllm")
    assert done.returncode == 1 and "REFUSE" in done.stdout and "DoRA" in done.stdout
