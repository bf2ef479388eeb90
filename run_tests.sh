#!/usr/bin/env bash
# Set up .venv (if needed) with the runtime and test requirements, then run the unit tests.
# Usage: bash run_tests.sh [extra pytest arguments]
# Tests run in ORTHOAD_TEST_WORKERS processes (default 2; 1 runs them in this process),
# one test file per process, so module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh --test
workers="${ORTHOAD_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != "1" ]; then
    parallel=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest -q -rs "${parallel[@]}" "$@" tests
