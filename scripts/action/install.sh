#!/usr/bin/env bash
# The GitHub Action's install step: peftdoctor's light install (no torch, transformers or peft) in a venv of
# its own under RUNNER_TEMP, so the job's Python and its packages stay as the workflow left them.
# SETUP_PYTHON: the interpreter actions/setup-python installed; INPUT_PEFTDOCTOR_VERSION: empty for the
# action's own checkout, else a release (X or ==X). Writes the venv's python to GITHUB_OUTPUT as `python`.
set -euo pipefail

version="${INPUT_PEFTDOCTOR_VERSION#==}"
if [ -z "$version" ]; then
  spec="${GITHUB_ACTION_PATH:?the runner sets GITHUB_ACTION_PATH}"
elif [[ "$version" =~ ^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$ ]]; then
  spec="peftdoctor==$version"
else  # the value is not echoed: it is the user's text, and this line is read as a workflow command
  echo "::error title=peftdoctor::peftdoctor-version: give a release number such as 0.2.0, or nothing" >&2
  exit 2
fi

venv="${RUNNER_TEMP:?the runner sets RUNNER_TEMP}/peftdoctor-action-venv"
# --clear: a second use of the action in one job starts afresh
"${SETUP_PYTHON:?the setup-python step gives its python-path}" -m venv --clear "$venv"
python="$venv/bin/python"
[ -x "$python" ] || python="$venv/Scripts/python.exe"  # a Windows runner's venv layout
"$python" -m pip install --quiet --disable-pip-version-check "$spec"
"$python" -m peftdoctor --version
echo "python=$python" >> "${GITHUB_OUTPUT:?}"
