"""The few source files of an engine release that the extractors read, cached from its released wheel.

An engine wheel is large (vLLM ~300 MB) but only a handful of its .py files decide what it does with a
PEFT adapter. ``ensure_sources`` downloads the wheel with pip (``pip download --no-deps --only-binary
:all:``), copies the members matching the engine's patterns into
``~/.cache/peftdoctor/engine-sources/<engine>/<version>/`` and deletes the wheel, so a release costs a few
seconds once and a few hundred KB after. A ``.complete`` marker makes a half-copied cache visible.
TGI publishes no wheel: its files are read at the release's git tag from a clone (GIT below).
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Members of each engine's wheel worth keeping: everything the extractors (extractors.py) may read.
KEEP: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm/config.py", "vllm/config/__init__.py", "vllm/config/lora.py", "vllm/engine/arg_utils.py", "vllm/lora/*.py",
             "vllm/model_executor/models/llava.py"),
    "sglang": ("sglang/srt/lora/*.py", "sglang/srt/server_args.py", "sglang/version.py"),
}
# Engines with no wheel on the package registry: their files come from a git clone with the release tags,
# named by an environment variable (the clone is a person's setup step, see docs/engines.md).
GIT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tgi": ("PEFTDOCTOR_TGI_GIT", "v{version}", (
        "server/pyproject.toml", "server/requirements_cuda.txt", "server/text_generation_server/adapters/lora.py",
        "server/text_generation_server/models/__init__.py", "server/text_generation_server/models/flash_causal_lm.py",
        "server/text_generation_server/models/flash_llama.py")),
}
# Wheels built for other interpreters than this one: pip may pick them when told the interpreter.
_PYTHONS = (None, "3.11", "3.10", "3.9", "3.8")


def cache_root() -> Path:
    base = os.environ.get("PEFTDOCTOR_ENGINE_SOURCES")
    return Path(base) if base else Path.home() / ".cache" / "peftdoctor" / "engine-sources"


def source_dir(engine: str, version: str) -> Path:
    return cache_root() / engine / version


def is_cached(engine: str, version: str) -> bool:
    return (source_dir(engine, version) / ".complete").exists()


def _download(engine: str, version: str, into: Path) -> Path:
    """The wheel of `engine==version` in `into` (pip picks it; other interpreters' wheels as a fallback)."""
    errors = []
    for python in _PYTHONS:
        extra = ["--python-version", python, "--platform", "manylinux2014_x86_64", "--platform",
                 "manylinux_2_28_x86_64", "--platform", "manylinux1_x86_64"] if python else []
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                               "--disable-pip-version-check", "-d", str(into), *extra, f"{engine}=={version}"],
                              capture_output=True, text=True)
        wheels = sorted(into.glob("*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["?"])
    raise RuntimeError(f"{engine}=={version}: no wheel could be downloaded ({errors[0][0]})")


def extract(engine: str, wheel: Path, target: Path) -> list[str]:
    """Copy the members of `wheel` matching KEEP[engine] under `target`; their names."""
    kept = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if any(fnmatch.fnmatchcase(name, pattern) and "/" not in name[len(pattern.rsplit("/", 1)[0]) + 1:]
                   for pattern in KEEP[engine]):
                path = target / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
                kept.append(name)
    return kept


def _from_git(engine: str, version: str, target: Path) -> None:
    variable, tag_format, paths = GIT[engine]
    repo = os.environ.get(variable)
    if not repo:
        raise RuntimeError(f"{engine}=={version}: set {variable} to a git clone of its source with the release tags")
    tag = tag_format.format(version=version)
    if subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "-q", f"{tag}^{{commit}}"],
                      capture_output=True).returncode != 0:
        raise RuntimeError(f"{engine}=={version}: {repo} has no tag {tag}")
    for path in paths:
        shown = subprocess.run(["git", "-C", repo, "show", f"{tag}:{path}"], capture_output=True)
        if shown.returncode == 0:  # a file the release does not have is a fact too: it stays absent
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(shown.stdout)
    (target / ".complete").write_text(f"git {tag}\n")


def ensure_sources(engine: str, version: str) -> Path:
    """The cached source files of `engine==version`, downloading the wheel (or reading the git tag) once."""
    target = source_dir(engine, version)
    if is_cached(engine, version):
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if engine in GIT:
        _from_git(engine, version, target)
        return target
    with tempfile.TemporaryDirectory(prefix=f"{engine}-{version}-") as scratch:
        wheel = _download(engine, version, Path(scratch))
        extract(engine, wheel, target)
        (target / ".complete").write_text(wheel.name + "\n")
    return target


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        name, _, ver = spec.partition("==")
        print(ensure_sources(name, ver))
