"""Released serving-engine wheels, side by side, for the plugins' tests (no GPU).

tests/test_vllm_plugin.py and tests/test_sglang_plugin.py run the engines' own plugin loaders, registries and
LoRA config code from the released wheels. Each wheel is downloaded once (``pip download --no-deps``, the
one way scripts/engines/sources.py fetches an engine wheel) into ``~/.cache/peftdoctor/engine-wheels`` and
installed with ``--no-deps --target`` into its own directory (scripts/peft_envs.py's install: staged, renamed
into place when complete, reused after), with the few pure dependencies those modules import
(:data:`EXTRAS`); torch and the rest come from the base venv. Code runs with that directory first on
``PYTHONPATH`` (peft_envs.environ_for).

Releases (docs/integrations/vllm.md, docs/integrations/sglang.md): vLLM 0.8.4, the last without
``vllm/lora/resolver.py``, 0.8.5, the first with it, 0.34.0, the newest checked; SGLang 0.5.11, the first with
``sglang/srt/plugins``, and 0.5.23, the newest. :data:`READ_ONLY` wheels are only read (SGLang 0.5.10.post1,
the release before the first with plugins).

CLI: ``python scripts/engine_envs.py`` ensures them all and prints their paths; scripts/test.sh runs it so
that CI has them before the tests start.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines.sources import _download as download  # noqa: E402 - the one way an engine wheel is fetched
from peft_envs import install  # noqa: E402 - the same atomic, marker-checked install

RELEASES: dict[str, tuple[str, ...]] = {"vllm": ("0.8.4", "0.8.5", "0.34.0"), "sglang": ("0.5.11", "0.5.23")}
READ_ONLY: dict[str, tuple[str, ...]] = {"sglang": ("0.5.10.post1",)}
# What vllm.lora.request (msgspec), vllm.plugins and vllm.lora.resolver import beyond the base venv; SGLang's
# plugin loader, hook registry and LoRA config need nothing beyond the standard library and huggingface_hub.
EXTRAS: dict[str, list[str]] = {"vllm": ["msgspec==0.21.1"], "sglang": []}
# What vllm 0.34.0's API-server LoRA path imports beyond that (vllm/entrypoints/openai/models/serving.py,
# vllm/lora/peft_helper.py, vllm/config/lora.py), found by importing them until nothing was missing.
SERVING_EXTRAS = [
    "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "annotated-types==0.8.0",
    "apache-tvm-ffi==0.1.15.post2", "cachetools==8.0.3", "cbor2==6.3.0", "fastapi==0.165.0", "frozenlist==1.8.0",
    "llguidance==1.9.1", "multidict==7.2.1", "opentelemetry-api==1.45.3", "pillow==13.0.0",
    "prometheus-client==0.26.0", "propcache==0.5.4", "py-cpuinfo==9.0.0", "pybase64==1.5.1", "pydantic==2.14.4",
    "pydantic-core==2.50.5", "pyzmq==27.3.0", "starlette==1.10.0", "typing-inspection==0.4.5", "uvloop==0.23.0",
    "xgrammar==0.2.9", "yarl==1.25.1",
]
SERVING_RELEASE = "0.34.0"  # of vLLM


def _root() -> Path:
    base = os.environ.get("PEFTDOCTOR_ENV_CACHE")
    return Path(base).parent if base else Path.home() / ".cache" / "peftdoctor"


def wheel(engine: str, version: str) -> Path:
    """The released wheel of `engine`==`version`, downloaded once."""
    where = _root() / "engine-wheels"
    found = sorted(where.glob(f"{engine}-{version}-*.whl"))
    if found:
        return found[0]
    where.mkdir(parents=True, exist_ok=True)
    # Into a private directory first, then renamed: a concurrent session never sees half a wheel.
    with tempfile.TemporaryDirectory(prefix=f".{engine}-", dir=where) as tmp:
        got = download(engine, version, Path(tmp))
        os.replace(got, where / got.name)
    return where / got.name


def env_dir(engine: str, version: str) -> Path:
    return _root() / "engine-envs" / f"py{sys.version_info.major}{sys.version_info.minor}" / f"{engine}-{version}"


def ensure(engine: str, version: str, quiet: bool = True) -> Path:
    """The directory holding `engine`==`version` and its :data:`EXTRAS`, installed unless complete."""
    return install(env_dir(engine, version), [str(wheel(engine, version)), *EXTRAS[engine]], quiet)


def ensure_serving_deps(quiet: bool = True) -> Path:
    """The directory holding :data:`SERVING_EXTRAS` (put after vllm 0.34.0's on PYTHONPATH)."""
    return install(env_dir("vllm", SERVING_RELEASE).with_name("vllm-serving-deps"), SERVING_EXTRAS, quiet)


def main() -> int:
    for engine, versions in RELEASES.items():
        for version in versions:
            print(ensure(engine, version), flush=True)
    for engine, versions in READ_ONLY.items():
        for version in versions:
            print(wheel(engine, version), flush=True)
    print(ensure_serving_deps(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
