#!/usr/bin/env bash
# Set up a virtual environment from nothing and run the whole test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PEFTDOCTOR_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: the CPU build on this machine's disk; a bare requirement pulls a CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]"
# Old peft releases, side by side, with the transformers of their era (cached across runs).
"$PY" -m pip install -q $("$PY" scripts/peft_envs.py --base-requirements)
"$PY" scripts/peft_envs.py 0.3.0 0.6.2 0.9.0 0.10.0 0.13.2 0.15.0 0.15.2 0.18.1 >/dev/null
# The transformers axis: transformers releases and peft releases alone, side by side (cached likewise).
"$PY" scripts/transformers_envs.py --ci >/dev/null
# The source files of the few engine releases whose facts the tests extract again (a wheel each, cached).
"$PY" scripts/generate_engines.py --ci-sources >/dev/null
# vLLM's and SGLang's released wheels for the plugins' tests, installed side by side (cached likewise).
"$PY" scripts/engine_envs.py >/dev/null
exec "$PY" -m pytest -q "$@"
