#!/usr/bin/env bash
# TIPC serving chain: export (ONNX) -> infer.py on the export (the reference) -> start serve.py
# on the export folder -> send the lite chain's images with a client -> compare every answer
# with infer.py's -> stop the service with SIGTERM (it drains, then exits 0).
# Needs the model of the train chain: run prepare.sh and test_train_inference_python.sh first.
# Usage: bash test_tipc/test_serving_infer_python.sh test_tipc/configs/OrthoAD/serving_infer_python.txt
set -uo pipefail
source "$(dirname "$0")/common_func.sh"
FILENAME=${1:?usage: test_serving_infer_python.sh CONFIG}
[ -f "$FILENAME" ] || { echo "test_tipc: error: config '$FILENAME' does not exist" >&2; exit 2; }
v() { config_value "$FILENAME" "$1" "$2" || exit 2; }
model_name=$(v 2 model_name) || exit 2
python=$(v 3 python) || exit 2
trans_model=$(v 4 trans_model) || exit 2
model_path=$(v 5 --model_path) || exit 2
save_dir=$(v 6 --save_dir) || exit 2
web_service=$(v 7 web_service) || exit 2
model_dir=$(v 8 --model_dir) || exit 2
port=$(v 9 --port) || exit 2
max_batch=$(v 10 --max_batch) || exit 2
client=$(v 11 pipeline) || exit 2
image_dir=$(v 12 --image_dir) || exit 2
if [ ! -f "$model_path" ]; then
    echo "test_tipc: error: '$model_path' does not exist: run prepare.sh and" \
         "test_train_inference_python.sh (lite_train_lite_infer) first" >&2
    exit 2
fi
LOG_PATH="./test_tipc/output/${model_name}/serving"
mkdir -p "$LOG_PATH"
status_log="${LOG_PATH}/results_serving_python.log"
: > "$status_log"
category=$(basename "$save_dir")
failed=0
echo "TIPC ${model_name} serving: logs in ${LOG_PATH}"
run_step export "$python $trans_model --model_path=$model_path --save_dir=$save_dir" || exit 1
run_step infer "$python infer.py --model_file=$save_dir/model.onnx --input_file=$image_dir --save_path=$LOG_PATH/infer --save_pic=False" || exit 1
$python $web_service --model_dir="$model_dir" --port="$port" --max_batch="$max_batch" \
    > "${LOG_PATH}/service.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq 1 300); do
    if $python -c "import http.client,sys; c=http.client.HTTPConnection('127.0.0.1',$port,timeout=2); c.request('GET','/health'); sys.exit(0 if c.getresponse().status==200 else 1)" 2>/dev/null; then
        ready=1; break
    fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
done
if [ $ready -eq 1 ]; then
    status_check 0 "$python $web_service --model_dir=$model_dir --port=$port (ready)" "$status_log"
    run_step client "$python $client --port=$port --category=$category --image_dir=$image_dir --reference=$LOG_PATH/infer"
    grep -h "serving client:" "${LOG_PATH}/client.log" | sed 's/^/  /'
else
    status_check 1 "$python $web_service --model_dir=$model_dir --port=$port (never ready)" "$status_log"
    failed=1
    tail -n 5 "${LOG_PATH}/service.log" | sed 's/^/    | /'
fi
kill -TERM $pid 2>/dev/null
wait $pid
rc=$?
status_check $rc "kill -TERM (the service drains and exits)" "$status_log"
[ $rc -eq 0 ] || failed=1
if [ $failed -ne 0 ]; then
    echo "TIPC ${model_name} serving: FAILED (see ${status_log})"
    exit 1
fi
echo "TIPC ${model_name} serving: all steps passed (see ${status_log})"
