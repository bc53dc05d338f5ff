"""The engine tables are generated, and what they say is what the engines' released code does.

1. The committed tables are exactly what scripts/generate_engines.py builds from the committed facts.
2. The extractors, run again on real releases' source (cached by scripts/test.sh from the released wheels),
   give the committed facts of those releases.
3. vLLM's own PEFTHelper from the newest checked wheel, run on small configs, refuses exactly what the table
   says it refuses, with the text the table quotes.
4. A release that is not checked is judged as the closest older checked one, and the finding says so (PD455).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from peftdoctor.engines import Target, _hits, applicable, judged_release, parse_target, target_findings
from peftdoctor.errors import UnusableInput
from peftdoctor.io.adapter import open_adapter
from peftdoctor.ops.fix import plan

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "engines"))
import generate_engines  # noqa: E402
import sources  # noqa: E402
from packaging.version import Version  # noqa: E402

TINY = ROOT / "fixtures" / "tiny-llama-lora"


@pytest.mark.parametrize("engine", generate_engines.GENERATED)
def test_committed_table_is_what_the_generator_builds(engine: str) -> None:
    built = generate_engines.dumps(generate_engines.build_table(engine, generate_engines.read_facts(engine)))
    assert (ROOT / "peftdoctor" / "engines" / f"{engine}.json").read_text("utf-8") == built, \
        "run: python scripts/generate_engines.py --tables-only"


def test_check_mode_exits_zero_on_the_committed_tables() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_engines.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("engine,version", generate_engines.CI_RELEASES)
def test_extractors_reproduce_the_committed_facts_from_the_real_release(engine: str, version: str) -> None:
    # ensure_sources downloads the wheel if scripts/test.sh has not cached it: never a silent skip
    assert generate_engines.extract_release(engine, version) == generate_engines.read_facts(engine)[version]
    assert (sources.source_dir(engine, version) / ".complete").read_text().startswith(f"{engine}-{version}-")


def _facts(engine: str) -> dict[str, Any]:
    return json.loads(json.dumps(generate_engines.read_facts(engine)))  # a deep copy to mutate


def test_a_fact_that_changes_in_the_newest_release_makes_a_new_run() -> None:
    facts = _facts("vllm")
    facts["0.34.0"]["max_lora_ranks"]["value"] = [*facts["0.34.0"]["max_lora_ranks"]["value"], 1024]
    rows = {e["id"]: e for e in generate_engines.build_table("vllm", facts)["entries"]}
    assert rows["vllm-rank-max-d"]["releases"] == ">=0.11.1,<0.34.0"
    assert rows["vllm-rank-max-e"]["releases"] == ">=0.34.0"
    assert rows["vllm-rank-max-e"]["params"]["allowed"][-1] == 1024
    assert rows["vllm-rank-max-e"]["source"].startswith("vllm-project/vllm@v0.34.0: vllm/config/lora.py")


def test_a_key_read_where_no_row_describes_it_stops_the_generator() -> None:
    facts = _facts("sglang")
    facts["0.5.23"]["modules_to_save"] = {"value": "read", "where": "sglang/srt/lora/lora.py LoRAAdapter"}
    with pytest.raises(ValueError, match="no row for facts 'read'"):
        generate_engines.build_table("sglang", facts)


def test_a_refusal_of_a_key_no_row_names_stops_the_generator() -> None:
    facts = _facts("vllm")
    facts["0.34.0"]["unlisted_refusal"] = {"value": "found", "text": "use_newthing"}
    with pytest.raises(ValueError, match="no row for facts 'found'"):
        generate_engines.build_table("vllm", facts)


def test_missing_facts_for_a_checked_release_are_an_error() -> None:
    facts = _facts("vllm")
    del facts["0.8.0"]
    with pytest.raises(ValueError, match="no facts for 0.8.0"):
        generate_engines.build_table("vllm", facts)


# --- vLLM's real PEFTHelper ------------------------------------------------------------------------------

class _Logger(logging.Logger):
    def info_once(self, *args: Any, **kwargs: Any) -> None: ...

    def warning_once(self, *args: Any, **kwargs: Any) -> None: ...


def _peft_helper(version: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """vllm/lora/peft_helper.py of the released wheel, imported with its two vLLM imports stubbed:
    LoRAConfig only as a type hint, init_logger only for log lines."""
    stubs = {"vllm": {}, "vllm.config": {}, "vllm.config.lora": {"LoRAConfig": object},
             "vllm.logger": {"init_logger": lambda name: _Logger(name)}}
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    path = sources.ensure_sources("vllm", version) / "vllm" / "lora" / "peft_helper.py"
    spec = importlib.util.spec_from_file_location(f"vllm_{version.replace('.', '_')}_peft_helper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PEFTHelper


BASE = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
# One config per feature vLLM 0.34.0 has a row for; each differs from BASE in that feature only.
CONFIGS = {
    "dora": {"use_dora": True},
    "modules_to_save_non_head": {"modules_to_save": ["embed_tokens"]},
    "lora_bias": {"lora_bias": True},
    "bias": {"bias": "all"},
    "base_mutating_init": {"init_lora_weights": "pissa"},
    "rank_above_default": {"r": 32},
    "rslora": {"use_rslora": True},
    "rank_pattern": {"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"q_proj": 2}},
    "layer_replication": {"layer_replication": [[0, 2], [1, 3]]},
    "alora_invocation_tokens": {"alora_invocation_tokens": [128, 9]},
    "use_qalora": {"use_qalora": True},
    "use_bdlora": {"use_bdlora": {"nblocks": 2}},
    "clean": {},
}


def _vllm_error(helper: Any, config: dict[str, Any]) -> str:
    try:
        helper.from_dict(config).validate_legal(types.SimpleNamespace(max_lora_rank=16))
    except ValueError as error:
        return str(error)
    return ""


@pytest.mark.parametrize("feature", sorted(CONFIGS))
def test_vllm_refuses_what_the_table_says_it_refuses(feature: str, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = _peft_helper("0.34.0", monkeypatch)
    config = {**BASE, **CONFIGS[feature]}
    error = _vllm_error(helper, config)
    entries = applicable(parse_target("vllm==0.34.0"))[2]
    hits = [(e, d) for e, d in _hits(entries, config, None) if e.behaviour != "ok"]
    refusals = [e for e, _ in hits if e.behaviour == "refuses_at_load"]
    assert bool(error) == bool(refusals), (error, [e.id for e in refusals])
    for entry in refusals:
        if "vLLM raises '" in entry.message:
            quoted = entry.message.split("vLLM raises '", 1)[1].split("'", 1)[0]
            quoted = quoted.replace("rank R ", f"rank {config['r']} ").rstrip(".")  # "...", a placeholder, ends it
            assert quoted in error, (entry.id, error)


def test_vllm_scales_rslora_and_patterns_as_the_ok_rows_say(monkeypatch: pytest.MonkeyPatch) -> None:
    helper = _peft_helper("0.34.0", monkeypatch)
    rs = helper.from_dict({**BASE, "use_rslora": True})
    assert rs.vllm_lora_scaling_factor == pytest.approx(16 / math.sqrt(8))
    patterned = helper.from_dict({**BASE, **CONFIGS["rank_pattern"]})
    assert patterned.get_rank_and_scaling("model.layers.0.self_attn.q_proj") == (4, 2 / 4)
    ids = {e.id for e in applicable(parse_target("vllm==0.34.0"))[2]}
    assert {"vllm-rslora-ok", "vllm-rank-pattern-ok"} <= ids


# --- releases that are not checked ---------------------------------------------------------------------------

@pytest.mark.parametrize("asked,judged", [("vllm==99.0", "0.34.0"), ("vllm==0.8.5.post1", "0.8.5"),
                                          ("vllm==0.6.6.post1", "0.6.6"), ("vllm==0.35.0rc1", "0.34.0"),
                                          ("sglang==0.4.1.post7", "0.4.1"), ("tgi==3.2.4", "3.2.3"),
                                          ("tgi==3.3.9", "3.3.7")])
def test_an_unchecked_release_is_judged_as_the_closest_older_one_and_says_so(asked: str, judged: str) -> None:
    target = parse_target(asked)
    table, version, note = judged_release(target)
    assert version == Version(judged)
    assert note is not None and note.code == "PD455" and note.severity.name == "INFO"
    assert f"{table.name} {target.version} is not a checked release" in note.message
    assert f"judged as {table.name} {judged}, the closest older checked release" in note.message
    same = applicable(Target(target.engine, Version(judged)))[2]
    assert applicable(target)[2] == same


def test_a_checked_release_and_the_bare_engine_need_no_note() -> None:
    assert judged_release(parse_target("vllm==0.8.1"))[2] is None
    assert judged_release(parse_target("sglang"))[2] is None


def test_a_release_older_than_every_checked_one_is_unusable_input() -> None:
    with pytest.raises(UnusableInput, match=r"vLLM 0.1.0 is older than every checked release \(0.2.7\)"):
        applicable(parse_target("vllm==0.1.0"))


def test_check_and_fix_carry_the_note(tmp_path: Path) -> None:
    adapter = open_adapter(str(TINY))
    findings = target_findings(adapter, adapter.config, parse_target("vllm==99.0"))
    assert findings[0].code == "PD455" and "(standing in for" not in findings[0].message
    assert all("vLLM 0.34.0 (standing in for 99.0)" in f.message for f in findings[1:])
    notes = plan(str(TINY), serve="vllm==99.0").notes
    assert [n.code for n in notes] == ["PD455"]


def test_cli_says_it_in_one_line_and_exits_2_for_a_release_too_old() -> None:
    run = [sys.executable, "-m", "peftdoctor", "check", str(TINY), "--target"]
    newer = subprocess.run([*run, "vllm==99.0"], capture_output=True, text=True)
    assert "PD455" in newer.stdout and "judged as vLLM 0.34.0" in newer.stdout
    older = subprocess.run([*run, "vllm==0.1.0"], capture_output=True, text=True)
    assert older.returncode == 2 and "Traceback" not in older.stderr
    assert older.stderr.strip().count("\n") == 0 and "older than every checked release" in older.stderr
