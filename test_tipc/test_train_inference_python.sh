#!/usr/bin/env bash
# TIPC chain: train (+eval) -> eval -> export (Paddle, ONNX) -> Paddle Inference / ONNX Runtime.
# Usage: bash test_tipc/test_train_inference_python.sh test_tipc/configs/OrthoAD/train_infer_python.txt lite_train_lite_infer
# Every step's log is kept under test_tipc/output/<model>/; results_python.log gets one
# "Run successfully/failed with command - ...!" line per step; the exit status is non-zero if
# any step failed.
set -uo pipefail
source "$(dirname "$0")/common_func.sh"
FILENAME=${1:?usage: test_train_inference_python.sh CONFIG MODE}
MODE=${2:?usage: test_train_inference_python.sh CONFIG MODE}
check_args "$FILENAME" "$MODE"

# ---- parse (each key is checked at its line; a misplaced or misspelled key is an error)
v() { config_value "$FILENAME" "$1" "$2" || exit 2; }
m() { local raw; raw=$(v "$1" "$2") || exit 2; mode_value "$raw" "$MODE" "$FILENAME" "$1" || exit 2; }
model_name=$(v 2 model_name) || exit 2
python=$(v 3 python) || exit 2
gpu_list=$(v 4 gpu_list) || exit 2
train_use_gpu=$(m 5 --use_gpu) || exit 2
data_path=$(m 6 --data_path) || exit 2
data_format=$(m 7 --data_format) || exit 2
category=$(m 8 --category) || exit 2
save_path=$(m 9 --save_path) || exit 2
train_batch=$(m 10 --batch_size) || exit 2
resize=$(m 11 --resize) || exit 2
crop_size=$(m 12 --crop_size) || exit 2
input_size=$(m 13 --input_size) || exit 2
pretrained=$(m 14 --pretrained) || exit 2
trainer=$(v 16 trainer) || exit 2
norm_train=$(v 17 norm_train) || exit 2
eval_cmd=$(v 20 eval) || exit 2
export_dir=$(m 23 --save_dir) || exit 2
norm_export=$(v 24 norm_export) || exit 2
export_formats=$(v 25 --format) || exit 2
inference=$(v 27 inference) || exit 2
infer_use_gpu=$(v 28 --use_gpu) || exit 2
infer_mkldnn=$(v 29 --enable_mkldnn) || exit 2
infer_threads=$(v 30 --cpu_threads) || exit 2
infer_batch=$(v 31 --batch_size) || exit 2
infer_precision=$(v 32 --precision) || exit 2
infer_input=$(m 33 --input_file) || exit 2
infer_benchmark=$(v 34 --enable_benchmark) || exit 2
[ "$trainer" == "norm_train" ] || { echo "test_tipc: error: $FILENAME line 16: trainer '$trainer' is not supported; use norm_train" >&2; exit 2; }

LOG_PATH="./test_tipc/output/${model_name}"
mkdir -p "$LOG_PATH"
status_log="${LOG_PATH}/results_python.log"
: > "$status_log"
failed=0
run_step() {   # run_step NAME COMMAND...
    local name=$1; shift
    local log="${LOG_PATH}/${name}.log"
    local cmd="$*"
    local start=$(date +%s.%N)
    eval "$cmd" > "$log" 2>&1
    local rc=$?
    local secs=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
    status_check $rc "$cmd" "$status_log"
    echo "  ${name}: exit ${rc}, ${secs} s, log ${log}"
    [ $rc -eq 0 ] || { failed=1; tail -n 5 "$log" | sed 's/^/    | /'; }
}
gpu_available() { $python -c "import paddle,sys; sys.exit(0 if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)" 2>/dev/null; }

# geometry: 'auto' leaves a flag out (the model chooses; see docs/geometry.md)
data_args="--data_path=${data_path} --data_format=${data_format} --category=${category} --save_path=${save_path}"
[ "$resize" == "auto" ] || data_args+=" --resize=${resize}"
[ "$crop_size" == "auto" ] || data_args+=" --crop_size=${crop_size}"
[ "$input_size" == "auto" ] || data_args+=" --input_size ${input_size}"
echo "TIPC ${model_name} ${MODE}: logs in ${LOG_PATH}"

# ---- train (+ eval)
run_step train "$python $norm_train $data_args --batch_size=${train_batch} --pretrained=${pretrained}"
run_step eval "$python $eval_cmd --data_path=${data_path} --data_format=${data_format} --category=${category} --save_path=${save_path}"

# ---- export (each format) and inference (Paddle Inference for paddle, ONNX Runtime for onnx)
IFS='|' read -r -a formats <<< "$export_formats"
IFS='|' read -r -a gpus <<< "$infer_use_gpu"
IFS='|' read -r -a threads <<< "$infer_threads"
IFS='|' read -r -a batches <<< "$infer_batch"
IFS='|' read -r -a mkldnns <<< "$infer_mkldnn"
for fmt in "${formats[@]}"; do
    fmt_dir="${export_dir}/${fmt}"
    run_step "export_${fmt}" "$python $norm_export --category=${category} --save_path=${save_path} --save_dir=${fmt_dir} --format=${fmt}"
    if [ "$fmt" == "onnx" ]; then
        model_args="--model_file=${fmt_dir}/model.onnx"
    else
        model_file="${fmt_dir}/model.json"
        [ -f "$model_file" ] || model_file="${fmt_dir}/model.pdmodel"
        model_args="--model_file=${model_file} --params_file=${fmt_dir}/model.pdiparams"
    fi
    for use_gpu in "${gpus[@]}"; do
        if [ "$use_gpu" == "True" ]; then
            if ! gpu_available; then
                echo "  (skipping ${fmt} --use_gpu=True: no GPU in this Paddle build or machine)"
                continue
            fi
            thread_list=("1")
            mkldnn_list=("False")
        else
            thread_list=("${threads[@]}")
            mkldnn_list=("${mkldnns[@]}")
        fi
        [ "$fmt" == "onnx" ] && mkldnn_list=("n/a")       # oneDNN is a Paddle Inference setting
        for mk in "${mkldnn_list[@]}"; do
        mk_flag="--enable_mkldnn=${mk}"
        [ "$mk" == "n/a" ] && mk_flag=""                   # an ONNX export takes no such flag
        for t in "${thread_list[@]}"; do
            for bs in "${batches[@]}"; do
                tag="infer_${fmt}_gpu_${use_gpu}_mkldnn_${mk/n\/a/na}_threads_${t}_bs_${bs}"
                run_step "$tag" "$python $inference --use_gpu=${use_gpu} ${mk_flag} --cpu_threads=${t} --batch_size=${bs} --precision=${infer_precision} ${model_args} --stats=${fmt_dir}/deploy.json --input_file=${infer_input} --save_path=${LOG_PATH}/${tag} --enable_benchmark=${infer_benchmark}"
                grep -h "^benchmark:" "${LOG_PATH}/${tag}.log" | sed 's/^/    /'
            done
        done
        done
    done
done

if [ $failed -ne 0 ]; then
    echo "TIPC ${model_name} ${MODE}: FAILED (see ${status_log})"
    exit 1
fi
echo "TIPC ${model_name} ${MODE}: all steps passed (see ${status_log})"
