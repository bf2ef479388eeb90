#!/usr/bin/env bash
# Install only: create .venv (if needed) and install what the scripts need, nothing else.
# Usage: bash install.sh [--gpu CUDA_TAG] [--test] [--deploy]
#   (none)          paddlepaddle (CPU build) and requirements.txt
#   --gpu cu126     paddlepaddle-gpu from Paddle's package index (CUDA tag: cu118, cu126, ...),
#                   then requirements.txt without the CPU build
#   --test          also requirements-test.txt (pytest and the test oracles)
#   --deploy        only the runtime (pip install .: orthoad_runtime, ONNX Runtime, no Paddle):
#                   an ONNX export on a line PC
# PYTHON (default python3) makes the venv; VENV (default .venv) names it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
gpu="" test=0 deploy=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) [ $# -ge 2 ] || { echo "install.sh: error: --gpu needs a CUDA tag, e.g. --gpu cu126" >&2; exit 2; }
           gpu="$2"; shift 2 ;;
    --test) test=1; shift ;;
    --deploy) deploy=1; shift ;;
    *) echo "install.sh: error: unknown option '$1': use --gpu CUDA_TAG, --test or --deploy" >&2; exit 2 ;;
  esac
done
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if [ "$deploy" = 1 ]; then
  "${pip[@]}" .
  exit 0
fi
has() { "$VENV/bin/python" -m pip show -q "$1" >/dev/null 2>&1; }
grep -v '^paddlepaddle' requirements.txt > "$VENV/requirements-no-paddle.txt"
if [ -n "$gpu" ]; then
  # both builds install the module 'paddle': never keep the two
  has paddlepaddle && "$VENV/bin/python" -m pip uninstall -y -q paddlepaddle
  "${pip[@]}" paddlepaddle-gpu==3.3.1 -i "https://www.paddlepaddle.org.cn/packages/stable/$gpu/"
  "${pip[@]}" -r "$VENV/requirements-no-paddle.txt"
elif has paddlepaddle-gpu; then
  echo "install.sh: $VENV has paddlepaddle-gpu: keeping it (not adding the CPU build)"
  "${pip[@]}" -r "$VENV/requirements-no-paddle.txt"
else
  "${pip[@]}" -r requirements.txt
fi
if [ "$test" = 1 ]; then
  grep -v '^-r ' requirements-test.txt > "$VENV/requirements-test-only.txt"
  "${pip[@]}" -r "$VENV/requirements-test-only.txt"
fi
