"""SGLang releases side by side, for the SGLang plugin's tests (tests/test_sglang_plugin.py).

Each release is its released wheel installed with ``pip install --no-deps --target`` under
~/.cache/peftdoctor/engine-wheels (scripts/peft_envs.py's install: staged, renamed into place when
complete, reused after). The tests import only SGLang's plugin loader, hook registry and LoRA config
from it, which need nothing beyond the standard library and huggingface_hub. The wheel of the release
before the first with plugins is only downloaded (~/.cache/peftdoctor/engine-wheels/py311/wheels) and read.

CLI: ``python scripts/sglang_wheel.py [VERSION ...]`` ensures those releases (default: RELEASES) and
prints their paths; scripts/test.sh runs it so that CI has them before the tests start.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peft_envs import install  # noqa: E402

# The first release with sglang/srt/plugins and the newest one checked; the release just before the first,
# whose wheel is only read (the tests show it has no plugin framework).
RELEASES = ("0.5.11", "0.5.23")
BEFORE_FIRST = "0.5.10.post1"


def cache_root() -> Path:
    """One directory per release and Python minor version: the wheels are built per CPython (cp311)."""
    base = os.environ.get("PEFTDOCTOR_ENGINE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "peftdoctor" / "engine-wheels"
    return root / f"py{sys.version_info.major}{sys.version_info.minor}"


def ensure(version: str) -> Path:
    """The directory holding sglang==`version`, installed when missing."""
    return install(cache_root() / f"sglang-{version}", [f"sglang=={version}"])


def wheel(version: str) -> Path:
    """The released wheel of sglang==`version` itself, downloaded when missing."""
    where = cache_root() / "wheels"
    found = sorted(where.glob(f"sglang-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "--no-input", "-q", "-d", str(where), f"sglang=={version}"], check=True)
        found = sorted(where.glob(f"sglang-{version}-*.whl"))
    return found[0]


def main(argv: list[str]) -> int:
    for version in argv or RELEASES:
        print(ensure(version))
    if not argv:
        print(wheel(BEFORE_FIRST))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
