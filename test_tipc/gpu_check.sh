#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, in under 10 minutes,
#   1. install paddlepaddle-gpu (from PADDLE_GPU_WHEELS=DIR if given, else Paddle's index for
#      CUDA ${CUDA_TAG:-cu126}) and the rest of requirements.txt into .venv-gpu,
#   2. run the tests and the TIPC lite chain (its GPU branch: infer.py --use_gpu=True),
#   3. check that CPU and GPU give the same statistics and maps (gpu_parity.py),
#   4. print the benchmark table for resnet18 k=100 and wide_resnet50_2 k=300: fit, evaluation
#      and inference images/s next to a backbone-only GPU pass over the same images.
# Usage: bash test_tipc/gpu_check.sh            (writes test_tipc/output/gpu_check/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=test_tipc/output/gpu_check
mkdir -p "$OUT"
PY=${PYTHON:-python3}
step() { echo; echo "== $*"; }

step "1/4 install paddlepaddle-gpu"
[ -x .venv-gpu/bin/python ] || "$PY" -m venv .venv-gpu
V=.venv-gpu/bin/python
if [ -n "${PADDLE_GPU_WHEELS:-}" ]; then
    $V -m pip install -q --no-index --find-links "$PADDLE_GPU_WHEELS" paddlepaddle-gpu==3.3.1 || exit 1
else
    $V -m pip install -q paddlepaddle-gpu==3.3.1 \
        -i "https://www.paddlepaddle.org.cn/packages/stable/${CUDA_TAG:-cu126}/" || exit 1
fi
grep -v '^paddlepaddle' requirements.txt > "$OUT/requirements-gpu.txt"
$V -m pip install -q -r "$OUT/requirements-gpu.txt" pytest || exit 1
$V -c "import paddle, sys; ok = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0; print('paddle', paddle.__version__, 'GPUs', paddle.device.cuda.device_count()); sys.exit(0 if ok else 1)" \
    || { echo "gpu_check: error: no GPU visible to paddlepaddle-gpu"; exit 2; }
failed=0

step "2/4 tests and TIPC (GPU branch)"
timeout 240 $V -m pytest -q -x tests 2>&1 | tail -n 5 | tee "$OUT/tests.log" || failed=1
source .venv-gpu/bin/activate
bash test_tipc/prepare.sh test_tipc/configs/OrthoAD/train_infer_python.txt lite_train_lite_infer > "$OUT/tipc_prepare.log" 2>&1
timeout 180 bash test_tipc/test_train_inference_python.sh test_tipc/configs/OrthoAD/train_infer_python.txt lite_train_lite_infer 2>&1 | grep -E "gpu_True|TIPC" | tee "$OUT/tipc.log" || failed=1

step "3/4 CPU and GPU agree"
timeout 120 $V test_tipc/gpu_parity.py 2>&1 | tee "$OUT/parity.log" || failed=1

step "4/4 benchmark (GPU)"
timeout 240 $V benchmark.py --configs resnet18:100,wide_resnet50_2:300 --engines dygraph,inference \
    --n_train 200 --n_test 100 --size 256 --batch_size 32 --out "$OUT/benchmark.json" 2>/dev/null \
    | tee "$OUT/benchmark.md" || failed=1

echo
[ $failed -eq 0 ] && echo "gpu_check: all steps passed (logs in $OUT)" || echo "gpu_check: FAILED (logs in $OUT)"
exit $failed
