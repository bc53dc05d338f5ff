"""Side-by-side environments for the transformers axis: transformers releases, and peft releases alone.

A (peft, transformers) pair runs as `pip install peft==X transformers==Y` resolves it today: the current
interpreter with two directories first on PYTHONPATH, ``peft-only/peft-X`` (the peft wheel alone) and
``transformers-envs/transformers-Y`` (transformers with the huggingface_hub and tokenizers pip resolves for it,
``transformers-stack.tsv``); accelerate (the newest), torch and the generic dependencies come from the base venv,
as in ``peft_envs.py``. The base venv's own transformers needs no directory.

CLI: ``python scripts/transformers_envs.py 4.40.2 5.5.4`` ensures those transformers envs and prints their
paths; ``--peft 0.18.1 0.19.0`` ensures those peft-only dirs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib.metadata import version as installed
from pathlib import Path

import peft_envs

# The transformers releases the axis is generated for, oldest first: the eras of peft-era-pins.tsv from
# 4.36 on where the model code or what peft needs of it changed (EncoderDecoderCache 4.42, the VLMs'
# language_model prefix 4.52, transformers 5's weight conversions 5.0, HybridCache removed), and the newest.
TRANSFORMERS = ("4.36.2", "4.40.2", "4.43.3", "4.45.2", "4.51.3", "4.57.6", "5.5.4", "5.12.1", "5.23.0", "5.25.0")
# What the smaller CI set installs (tests/test_transformers_axis.py): the pairs the issue measured.
CI_TRANSFORMERS = ("4.40.2", "4.57.6", "5.5.4", "5.12.1")
CI_PEFT = ("0.13.2", "0.15.0", "0.17.1", "0.18.1", "0.19.1")
STACK_FILE = Path(__file__).with_name("transformers-stack.tsv")


def root() -> Path:
    return peft_envs.cache_root().parent.parent


def base_transformers() -> str:
    """The base venv's transformers: runs without a directory of its own."""
    return installed("transformers")


def transformers_requirements(version: str) -> list[str]:
    stack = peft_envs.read_pins(STACK_FILE)
    if version not in stack:
        raise KeyError(f"no row for transformers {version} in {STACK_FILE.name}")
    return [f"transformers=={version}", *(f"{n}=={v}" for n, v in sorted(stack[version].items()) if v != "-")]


def hide(target: Path, package: str) -> None:
    """Make the base venv's `package` absent for the env at `target`: a shadowing package that cannot be
    imported and metadata saying version 0 (transformers checks both before it uses kernels)."""
    stub = target / package / "__init__.py"
    if stub.exists():
        return
    stub.parent.mkdir()
    stub.write_text(f'raise ImportError("{package} is not installed with this transformers release")\n')
    meta = target / f"{package}-0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0\n")


def resolve(version: str) -> dict[str, str]:
    """What pip resolves today for transformers `version` beside the base venv's torch (a dry run: installs nothing)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report",
                        str(report), f"transformers=={version}", f"torch=={installed('torch').split('+')[0]}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = {i["metadata"]["name"].lower().replace("-", "_"): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    return {n: found.get(n, "-") for n in ("huggingface_hub", "tokenizers", "kernels")}


def ensure_transformers(version: str, quiet: bool = True) -> list[Path]:
    """The PYTHONPATH entries that give transformers `version` (none for the base venv's own)."""
    if version == base_transformers():
        return []
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = root() / "transformers-envs" / python / f"transformers-{version}"
    peft_envs.install(target, transformers_requirements(version), quiet)
    for package, pin in peft_envs.read_pins(STACK_FILE)[version].items():
        if pin == "-":
            hide(target, package)
    return [target]


def ensure_peft(version: str, quiet: bool = True) -> Path:
    target = root() / "peft-only" / f"py{sys.version_info.major}{sys.version_info.minor}" / f"peft-{version}"
    return peft_envs.install(target, [f"peft=={version}"], quiet)


def pair_python_cmd(peft: str, transformers: str) -> tuple[list[str], dict[str, str]]:
    """``(argv prefix, environ)`` running Python with peft `peft` and transformers `transformers`."""
    return [sys.executable], peft_envs.environ_for([ensure_peft(peft), *ensure_transformers(transformers)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="transformers versions (default: the whole axis)")
    parser.add_argument("--peft", nargs="*", default=None, help="peft versions to install alone")
    parser.add_argument("--resolve", action="store_true", help=f"print the rows of {STACK_FILE.name} anew")
    parser.add_argument("--ci", action="store_true", help="the set the tests run: CI_TRANSFORMERS and CI_PEFT")
    args = parser.parse_args(argv)
    if args.ci:
        args.versions, args.peft = list(CI_TRANSFORMERS), list(CI_PEFT)
    if args.resolve:
        for version in args.versions or TRANSFORMERS:
            print(version, *resolve(version).values(), sep="\t", flush=True)
        return 0
    if args.peft is not None:
        for version in args.peft or list(peft_envs.read_pins()):  # 0.1.0 has no era pins
            print(ensure_peft(version, quiet=False), flush=True)
        if not args.versions:
            return 0
    for version in args.versions or TRANSFORMERS:
        print(*ensure_transformers(version, quiet=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
