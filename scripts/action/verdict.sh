#!/usr/bin/env bash
# The GitHub Action's last step: fail the job from the check step's exit code (EXIT_CODE) and fail-on.
# Findings (1) fail unless fail-on is never; unusable input (2, or no exit code at all) always fails,
# because a check that could not run has not passed.
set -euo pipefail

case "${EXIT_CODE:-}" in
  0) echo "peftdoctor: passed" ;;
  1) if [ "${INPUT_FAIL_ON:-}" = never ]; then
       echo "peftdoctor: findings reported; fail-on is never, so the job goes on"
     else
       echo "::error title=peftdoctor::findings at or above fail-on; see the step summary or code scanning" >&2
       exit 1
     fi ;;
  *) echo "::error title=peftdoctor::unusable input (exit ${EXIT_CODE:-none}); the peftdoctor step's log says why" >&2
     exit 1 ;;
esac
