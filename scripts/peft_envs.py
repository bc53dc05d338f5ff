"""Side-by-side environments for old peft releases.

Each release gets its own directory holding ``peft==X`` and the
transformers/accelerate/huggingface_hub/tokenizers of its era (see
``peft-era-pins.tsv``), installed with ``pip install --target --no-deps``.
Code runs in it with the current interpreter and that directory first on
``PYTHONPATH``, so torch and the generic dependencies come from the base venv
(which must satisfy :data:`BASE_REQUIREMENTS`).

CLI: ``python scripts/peft_envs.py 0.6.2 0.13.2`` ensures those envs and prints
their paths.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.version import Version

PINS_FILE = Path(__file__).with_name("peft-era-pins.tsv")

# The first release that writes adapter_config.json.
FIRST_RELEASE = Version("0.1.0")

# What the era stacks need from the base venv besides torch: the union of the
# env packages' own Requires-Dist (installed here with --no-deps) and of the
# base-venv modules seen in sys.modules after importing each release and
# loading a config with it. peft 0.19.0-0.21.0 (huggingface_hub 1.x) need
# httpx; 0.21.1+ need httpx2, like the current huggingface_hub.
BASE_REQUIREMENTS: list[str] = [
    "click",
    "filelock",
    "fsspec",
    "hf-xet",
    "httpx>=0.23,<1",
    "httpx2",
    "numpy",
    "packaging",
    "psutil",
    "pyyaml",
    "regex",
    "requests",
    "safetensors",
    "tqdm",
    "typer",
    "typing_extensions",
]

# Installed into every env rather than the base venv: old accelerate imports
# pkg_resources, which setuptools 81 removed, and keeping it local leaves the
# project's own setuptools free.
ENV_EXTRAS: list[str] = ["setuptools==80.9.0"]

# Per-release additions: peft 0.1.0 imports bitsandbytes unconditionally
# (0.37.2 is its era's release and imports on CPU-only machines).
VERSION_EXTRAS: dict[str, list[str]] = {"0.1.0": ["bitsandbytes==0.37.2"]}

MARKER = ".peftdoctor-env-complete"


def cache_root() -> Path:
    """Directory holding one env per release, per Python minor version."""
    base = os.environ.get("PEFTDOCTOR_ENV_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "peftdoctor" / "peft-envs"
    return root / f"py{sys.version_info.major}{sys.version_info.minor}"


def read_pins(path: Path = PINS_FILE) -> dict[str, dict[str, str]]:
    """Map each peft version to its era's ``{package: version}`` pins."""
    rows = [
        line.split("\t")
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    header, body = rows[0], rows[1:]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in body}


def requirements(version: str) -> list[str]:
    """Exact requirement strings installed into the env for ``version``."""
    pins = read_pins()
    if version not in pins:
        raise KeyError(f"no era pins for peft {version}; add a row to {PINS_FILE.name}")
    reqs = [f"peft=={version}"]
    reqs += [f"{name}=={pin}" for name, pin in sorted(pins[version].items())]
    return reqs + VERSION_EXTRAS.get(version, []) + ENV_EXTRAS


def env_dir(version: str) -> Path:
    """Where the env for ``version`` lives (whether or not it exists yet)."""
    return cache_root() / f"peft-{version}"


def is_complete(version: str) -> bool:
    """True when the env was fully installed with the current requirements."""
    return _complete(env_dir(version), requirements(version))


def _complete(target: Path, reqs: list[str]) -> bool:
    marker = target / MARKER
    return marker.is_file() and marker.read_text() == "\n".join(reqs) + "\n"


def ensure_env(version: str, quiet: bool = True) -> Path:
    """Install the env for ``version`` unless a complete one exists; return its path."""
    return install(env_dir(version), requirements(version), quiet)


def install(target: Path, reqs: list[str], quiet: bool = True) -> Path:
    """Install ``reqs`` (``--no-deps``) into ``target`` unless a complete install of exactly them is there.

    pip writes into a temporary sibling directory that is renamed into place
    only after the marker is written, so an interrupted install is never
    mistaken for a complete one.
    """
    if _complete(target, reqs):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        cmd = [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
            "--disable-pip-version-check", "--no-input", "--target", str(tmp), *reqs,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
        (tmp / MARKER).write_text("\n".join(reqs) + "\n")
        if target.exists():
            # A stale or partial env from an older pins table: replace it.
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same env first; keep theirs.
            if not _complete(target, reqs):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def env_python_cmd(version: str) -> tuple[list[str], dict[str, str]]:
    """Return ``(argv prefix, environ)`` that run Python with the env's packages.

    The env directory goes first on ``PYTHONPATH`` so its peft/transformers
    shadow the base venv's; everything is kept offline and hash-seeded so
    output is reproducible.
    """
    return [sys.executable], environ_for([ensure_env(version)])


def environ_for(paths: list[Path]) -> dict[str, str]:
    """os.environ with ``paths`` first on PYTHONPATH, offline and hash-seeded."""
    environ = dict(os.environ)
    environ.update(
        PYTHONPATH=os.pathsep.join(map(str, paths)),
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        TF_CPP_MIN_LOG_LEVEL="3",
        USE_TF="0",
        USE_JAX="0",
    )
    return environ


def available_versions() -> list[str]:
    """Final peft releases from :data:`FIRST_RELEASE` on, as the index lists them."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "peft", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    ).stdout
    match = re.search(r"Available versions:\s*(.+)", out)
    if not match:
        raise RuntimeError(f"could not parse `pip index versions peft` output:\n{out}")
    found = {Version(v.strip()) for v in match.group(1).split(",") if v.strip()}
    keep = [v for v in found if v >= FIRST_RELEASE and not v.is_prerelease and not v.is_devrelease]
    return [str(v) for v in sorted(keep)]


def main(argv: list[str] | None = None) -> int:
    """CLI: ensure the named envs (default: all with pins) and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="peft versions (default: every pinned one)")
    parser.add_argument("--base-requirements", action="store_true",
                        help="print what the base venv needs for the era stacks, one per line, and exit")
    args = parser.parse_args(argv)
    if args.base_requirements:
        print("\n".join(BASE_REQUIREMENTS))
        return 0
    for version in args.versions or list(read_pins()):
        print(ensure_env(version, quiet=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
