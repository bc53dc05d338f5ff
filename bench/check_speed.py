"""How fast is a cold `peftdoctor check` next to the peft loader and check-jsonschema?

    python bench/check_speed.py [DIR] [--runs 15] [--warmups 2]

Each tool runs as a fresh process on DIR (default fixtures/tiny-llama-lora); the runs are
interleaved so that machine noise hits all three alike, and the median wall time is reported.
Targets (from the issue): peftdoctor takes at most 1/25 of the peft loader's time and is no
slower than check-jsonschema. Exit 0 when both are met, 1 when one is missed, 2 when a tool
cannot be run at all.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "fixtures" / "tiny-llama-lora"
PEFT_LOADER_SHARE = 25  # peftdoctor must take at most 1/25 of the peft loader's time


class CannotRun(Exception):
    """A tool is missing or failed; the benchmark cannot compare."""


@dataclass(frozen=True)
class Tool:
    name: str
    argv: list[str]
    ok_codes: frozenset[int]  # exit codes that mean "it did its job", whatever the verdict


def venv_script(name: str) -> Optional[str]:
    """The console script next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def peftdoctor_tool(directory: Path) -> Tool:
    script = venv_script("peftdoctor")
    argv = [script] if script else [sys.executable, "-m", "peftdoctor"]
    return Tool("peftdoctor check", [*argv, "check", str(directory)], frozenset({0, 1}))


def peft_tool(directory: Path) -> Tool:
    code = "import sys; from peft import PeftConfig; PeftConfig.from_pretrained(sys.argv[1])"
    return Tool("peft PeftConfig.from_pretrained", [sys.executable, "-c", code, str(directory)], frozenset({0}))


def check_jsonschema_tool(directory: Path, peft_version: str) -> Tool:
    schema = ROOT / "schemas" / f"peft-{peft_version}.json"
    if not schema.is_file():
        raise CannotRun(f"no schema for the installed peft {peft_version}: {schema} is missing")
    script = venv_script("check-jsonschema")
    if script is None:
        raise CannotRun("check-jsonschema is not installed")
    # A local --schemafile and a file:// base URI: every $ref resolves on disk, nothing is fetched.
    argv = [script, "--base-uri", schema.as_uri(), "--schemafile", str(schema), str(directory / "adapter_config.json")]
    return Tool("check-jsonschema", argv, frozenset({0, 1}))


def time_once(tool: Tool, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(tool.argv, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in tool.ok_codes:
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise CannotRun(f"{tool.name} exited {proc.returncode}: {' '.join(tool.argv)}\n{output}")
    return elapsed


def measure(tools: list[Tool], runs: int, warmups: int) -> dict[str, float]:
    """Median seconds per tool over `runs` interleaved cold runs, after `warmups` discarded ones."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    samples: dict[str, list[float]] = {tool.name: [] for tool in tools}
    for i in range(warmups + runs):
        for tool in tools:
            elapsed = time_once(tool, env)
            if i >= warmups:
                samples[tool.name].append(elapsed)
    return {name: statistics.median(times) for name, times in samples.items()}


def report(medians: dict[str, float], doctor: str, peft: str, jsonschema: str) -> bool:
    """Print the table and the targets; True when every target is met."""
    ours = medians[doctor]
    print(f"{'tool':<34} {'median s':>9} {'x peftdoctor':>13}")
    for name, seconds in medians.items():
        print(f"{name:<34} {seconds:>9.3f} {seconds / ours:>12.1f}x")
    targets = [
        (f"peftdoctor <= 1/{PEFT_LOADER_SHARE} of the peft loader",
         ours, medians[peft] / PEFT_LOADER_SHARE),
        ("peftdoctor no slower than check-jsonschema", ours, medians[jsonschema]),
    ]
    print("\ntargets:")
    met = True
    for label, value, limit in targets:
        ok = value <= limit
        met &= ok
        print(f"  {'met   ' if ok else 'MISSED'} {label}: {value:.3f} s vs limit {limit:.3f} s")
    return met


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmups", type=int, default=2)
    args = parser.parse_args(argv)
    directory = args.directory.resolve()
    if not (directory / "adapter_config.json").is_file():
        print(f"{directory}: no adapter_config.json", file=sys.stderr)
        return 2
    try:
        peft_version = metadata.version("peft")
        tools = [peftdoctor_tool(directory), peft_tool(directory), check_jsonschema_tool(directory, peft_version)]
        print(f"{directory} | peft {peft_version} | {args.runs} runs after {args.warmups} warm-ups | "
              f"python {sys.version.split()[0]} | {os.cpu_count()} cpus\n")
        medians = measure(tools, args.runs, args.warmups)
    except metadata.PackageNotFoundError:
        print("peft is not installed: nothing to compare with", file=sys.stderr)
        return 2
    except CannotRun as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0 if report(medians, *(tool.name for tool in tools)) else 1


if __name__ == "__main__":
    sys.exit(main())
