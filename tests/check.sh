#!/usr/bin/env bash
# The test command (README, .ci/run): lint and format check, then the quick tier, then the rest.
# Any failure stops it with a non-zero exit; a tier that selects no test (pytest exit 5) passes.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
ruff format --check .

tier() {
  local rc=0
  python -m pytest -m "$1" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    exit "$rc"
  fi
}
tier "not slow and not browser"
tier "slow or browser"
