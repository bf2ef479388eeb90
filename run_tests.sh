#!/usr/bin/env bash
# Set up .venv (if needed) with the runtime and test requirements, then run the unit tests.
# Usage: bash run_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
exec .venv/bin/python -m pytest -q "$@" tests
