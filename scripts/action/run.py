"""The GitHub Action's check step (action.yml, step `run`): peftdoctor on the given paths, its SARIF log to a
file, a summary to the job log and to the step summary, and the step's outputs for the steps after it.

The inputs arrive as INPUT_* environment variables, never pasted into a script: GitHub substitutes `${{ }}`
into a `run:` body as raw text, so an input holding `$(...)` would run. Run by the python of the venv the
install step made, this script runs that venv's peftdoctor as a command and reads its verdict back from
the SARIF it prints, the format code scanning takes; of peftdoctor's modules it imports only two light
ones, for the newest known peft release and for making a printed value inert.

Exit codes are peftdoctor's (0 clean, 1 findings at --fail-on, 2 unusable input), handed on as the
output `exit-code`; a bad input of the action is exit 2 as well. The step itself ends 0 so that the
upload can run first; the action's last step fails the job from `exit-code` and `fail-on`.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from peftdoctor.peft.releases import known_versions
from peftdoctor.render.terminal import line

COMMANDS = ("check", "scan")
FAIL_ON = {"error": "error", "warning": "warning", "never": "error"}  # action's fail-on -> peftdoctor's --fail-on
CHECK_ONLY = ("transformers", "target")  # inputs `scan` has no option for
GLOB_CHARACTERS = frozenset("*?[")
MAX_SARIF_BYTES = 64 * 1024 * 1024  # larger than code scanning takes: not a log of ours to read and replace
SUMMARY_ROWS = 200  # GitHub caps a step summary at 1 MiB; the SARIF file holds the rest
EXIT_UNUSABLE = 2


class Unusable(Exception):
    """An input the action cannot run with; str() is the one line the log shows."""


@dataclass(frozen=True)
class Inputs:
    """The action's inputs, as its step environment hands them over (action.yml: env INPUT_*)."""

    command: str
    paths: str
    peft: str
    transformers: str
    target: str
    fail_on: str
    sarif_file: str
    upload_sarif: str

    @classmethod
    def from_env(cls) -> "Inputs":
        return cls(**{f.name: os.environ.get(f"INPUT_{f.name.upper()}", "").strip() for f in fields(cls)})


def split_paths(value: str) -> list[str]:
    """One path or glob per line when the value has several lines (a name may hold spaces), else per word."""
    parts = value.splitlines() if "\n" in value.strip() else value.split()
    return [p.strip() for p in parts if p.strip()]


def expand(pattern: str, workspace: str) -> list[str]:
    """A glob's matches (sorted, `**` recursive) or the path itself, relative to the workspace where it lies
    inside it: code scanning places a result by its path from the repository's root."""
    found = [pattern]
    if GLOB_CHARACTERS & set(pattern):
        found = sorted(glob.glob(pattern, recursive=True))
        if not found:
            raise Unusable(f"paths: {pattern!r} matches nothing")
    return [os.path.relpath(p, workspace) if os.path.isabs(p) and _inside(p, workspace) else p for p in found]


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)


def arguments(inputs: Inputs, workspace: str) -> list[str]:
    """peftdoctor's command line for these inputs. Every value is one argv entry joined to its option
    (`--peft=...`) and the paths follow `--`, so no value can be read as an option."""
    if inputs.command not in COMMANDS:
        raise Unusable(f"command {inputs.command!r}: use check or scan")
    if inputs.fail_on not in FAIL_ON:
        raise Unusable(f"fail-on {inputs.fail_on!r}: use error, warning or never")
    if inputs.upload_sarif.lower() not in ("true", "false"):  # as case-blind as action.yml's `if:` that reads it
        raise Unusable(f"upload-sarif {inputs.upload_sarif!r}: use true or false")
    paths = [found for given in split_paths(inputs.paths or ".") for found in expand(given, workspace)]
    args = [inputs.command, "--format=sarif", f"--fail-on={FAIL_ON[inputs.fail_on]}",
            f"--peft={inputs.peft or newest_peft()}"]
    if inputs.command == "scan":
        given = [name.replace("_", "-") for name in CHECK_ONLY if getattr(inputs, name)]
        if given:
            raise Unusable(f"{' and '.join(given)}: only command check judges for them")
        if len(paths) != 1:
            raise Unusable(f"command scan takes one directory, not {len(paths)}; command check takes many")
    else:
        args += [f"--{name}={getattr(inputs, name)}" for name in CHECK_ONLY if getattr(inputs, name)]
    return args + ["--", *paths]


def newest_peft() -> str:
    """The default peft: the newest release this peftdoctor knows. The action's venv has no peft, and
    judging for 'the installed one' would add a note (PD117) to every adapter in code scanning."""
    return str(known_versions()[-1])


def sarif_target(value: str) -> Path:
    """Where the SARIF log goes. A file there already is replaced only when it is a peftdoctor SARIF log
    (the previous run's), never a file of the user's that the input happened to name."""
    if not value or any(ch in value for ch in "\r\n\0"):
        raise Unusable("sarif-file: give one file name")
    path = Path(value)
    if path.is_dir():
        raise Unusable(f"sarif-file {value!r} is a directory")
    if path.exists() and not _is_our_sarif(path):
        raise Unusable(f"sarif-file {value!r} exists and is not a peftdoctor SARIF log; name another file")
    return path


def _is_our_sarif(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_SARIF_BYTES:
            return False
        log = json.loads(path.read_text(encoding="utf-8"))
        return all(run["tool"]["driver"]["name"] == "peftdoctor" for run in log["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_atomically(path: Path, text: str) -> None:
    """The whole log or the old file, never half of one: written beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def results(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for run in log.get("runs", []) for r in run.get("results", [])]


def where(result: dict[str, Any]) -> str:
    locations = result.get("locations") or [{}]
    return locations[0].get("physicalLocation", {}).get("artifactLocation", {}).get("uri", "")


@dataclass(frozen=True)
class Outcome:
    """What the step found: peftdoctor's exit code, the SARIF results, the log written, and what was said
    besides: the action's own reason for not running peftdoctor (`problem`), peftdoctor's stderr lines."""

    code: int
    found: tuple[dict[str, Any], ...] = ()
    sarif: Optional[Path] = None
    problem: Optional[str] = None
    said: tuple[str, ...] = ()


def run(inputs: Inputs, workspace: str) -> Outcome:
    """peftdoctor on the inputs; its stderr (one line per unusable input, notes) is echoed and kept."""
    try:
        args = arguments(inputs, workspace)
        target = sarif_target(inputs.sarif_file)
    except Unusable as exc:
        return Outcome(EXIT_UNUSABLE, problem=str(exc))
    print(line("peftdoctor " + " ".join(args)), flush=True)
    done = subprocess.run([sys.executable, "-m", "peftdoctor", *args], capture_output=True, text=True)
    said = tuple(line(entry) for entry in done.stderr.splitlines() if entry.strip())
    if said:
        print("\n".join(said), file=sys.stderr, flush=True)
    if not done.stdout and done.returncode == EXIT_UNUSABLE:
        return Outcome(EXIT_UNUSABLE, said=said)  # nothing could be read: peftdoctor's lines say why
    try:
        found = tuple(results(json.loads(done.stdout)))
    except ValueError:
        return Outcome(max(done.returncode, EXIT_UNUSABLE), problem="peftdoctor wrote no SARIF log", said=said)
    try:
        write_atomically(target, done.stdout)
    except OSError as exc:
        problem = f"sarif-file {inputs.sarif_file!r}: {exc.strerror or exc}"
        return Outcome(EXIT_UNUSABLE, found, problem=problem, said=said)
    return Outcome(done.returncode, found, target, said=said)


def log_lines(found: tuple[dict[str, Any], ...]) -> list[str]:
    """The job log's summary: one inert line per result (terminal.line: a key from an adapter is shown,
    never obeyed), then the count."""
    rows = [line(f"  {r['level']} {r['ruleId']} {where(r)}: {r['message']['text']}") for r in found]
    return rows + [f"peftdoctor: {counted(found)}"]


def counted(found: tuple[dict[str, Any], ...]) -> str:
    by_level: dict[str, int] = {}
    for r in found:
        by_level[r["level"]] = by_level.get(r["level"], 0) + 1
    return ", ".join([plural(len(found), "finding")] + [plural(n, level) for level, n in sorted(by_level.items())])


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def cell(text: str) -> str:
    """`text` inside a markdown table cell: one line, its pipes and HTML shown as text."""
    escaped = line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace("|", "\\|").replace("`", "\\`")


VERDICTS = {0: "nothing at or above fail-on", 1: "findings at or above fail-on",
            EXIT_UNUSABLE: "unusable input: not every adapter was judged, and nothing was uploaded"}


def markdown(command: str, outcome: Outcome) -> str:
    """The step summary: the count and the exit code's meaning, what was said, then a table of the findings."""
    found = outcome.found
    text = [f"### peftdoctor {cell(command)}: {counted(found)}", "",
            f"Exit code {outcome.code}: {VERDICTS.get(outcome.code, VERDICTS[EXIT_UNUSABLE])}.", ""]
    said = ([outcome.problem] if outcome.problem else []) + list(outcome.said)
    text += [f"- {cell(entry)}" for entry in said] + ([""] if said else [])
    if found:
        text += ["| level | code | file | finding |", "| --- | --- | --- | --- |"]
        text += [f"| {cell(r['level'])} | {cell(r['ruleId'])} | {cell(where(r))} | {cell(r['message']['text'])} |"
                 for r in found[:SUMMARY_ROWS]]
        if len(found) > SUMMARY_ROWS:
            text += ["", f"{len(found) - SUMMARY_ROWS} more in the SARIF log."]
    return "\n".join(text) + "\n"


def workflow_error(message: str) -> str:
    """An ::error:: workflow command (an annotation on the run) whose data cannot end it or start another."""
    data = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::error title=peftdoctor::{data}"


def append(env_name: str, text: str) -> None:
    """Append to the file a GitHub variable names (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY); none outside Actions."""
    name = os.environ.get(env_name)
    if name:
        with open(name, "a", encoding="utf-8") as fh:
            fh.write(text)


def main() -> int:
    inputs, workspace = Inputs.from_env(), os.getcwd()
    # Nothing peftdoctor or an adapter prints may act as a workflow command (::add-mask::, ::set-env::...).
    token = secrets.token_hex(16)
    print(f"::stop-commands::{token}", flush=True)
    try:
        outcome = run(inputs, workspace)
        if outcome.found or outcome.sarif:
            print("\n".join(log_lines(outcome.found)), flush=True)
    finally:
        print(f"::{token}::", flush=True)
    if outcome.problem:
        print(workflow_error(outcome.problem), flush=True)
    append("GITHUB_OUTPUT", f"exit-code={outcome.code}\nfindings={len(outcome.found)}\n"
                            f"sarif-file={outcome.sarif or ''}\n")
    append("GITHUB_STEP_SUMMARY", markdown(inputs.command, outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
