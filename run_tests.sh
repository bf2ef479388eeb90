#!/usr/bin/env bash
# Set up .venv (if needed) with the runtime and test requirements, then run the unit tests.
# Usage: bash run_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh --test
exec .venv/bin/python -m pytest -q -rs "$@" tests
