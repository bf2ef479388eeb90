#!/usr/bin/env bash
# TIPC post-training quantisation chain, offline on the lite demo data: fit with the int8
# backbone (calibrated on normal training images) and evaluate -> evaluate the saved int8 model
# -> export its int8 ONNX graph -> run it with infer.py --precision int8 (1 and 2 threads,
# batch 1 and 2).
# Usage: bash test_tipc/test_ptq_inference_python.sh test_tipc/configs/OrthoAD/ptq_infer_python.txt
set -uo pipefail
source "$(dirname "$0")/common_func.sh"
FILENAME=${1:?usage: test_ptq_inference_python.sh CONFIG}
[ -f "$FILENAME" ] || { echo "test_tipc: error: config '$FILENAME' does not exist" >&2; exit 2; }
v() { config_value "$FILENAME" "$1" "$2" || exit 2; }
model_name=$(v 2 model_name) || exit 2
python=$(v 3 python) || exit 2
data_path=$(v 4 --data_path) || exit 2
category=$(v 5 --category) || exit 2
save_path=$(v 6 --save_path) || exit 2
geometry=$(v 7 --geometry) || exit 2
quant_train=$(v 8 quant_train) || exit 2
calibration=$(v 9 --calibration_images) || exit 2
eval_cmd=$(v 10 eval) || exit 2
export_cmd=$(v 11 export) || exit 2
save_dir=$(v 12 --save_dir) || exit 2
inference=$(v 13 inference) || exit 2
threads=$(v 14 --cpu_threads) || exit 2
batches=$(v 15 --batch_size) || exit 2
infer_input=$(v 16 --input_file) || exit 2
if [ ! -d "$data_path/$category" ]; then
    echo "test_tipc: error: no lite data at '$data_path': run" \
         "bash test_tipc/prepare.sh test_tipc/configs/$model_name/train_infer_python.txt lite_train_lite_infer first" >&2
    exit 2
fi
LOG_PATH="./test_tipc/output/${model_name}/ptq"
mkdir -p "$LOG_PATH"
status_log="${LOG_PATH}/results_ptq_python.log"
: > "$status_log"
failed=0
echo "TIPC ${model_name} PTQ: logs in ${LOG_PATH}"
data_args="--data_path=${data_path} --category=${category} --save_path=${save_path}"
run_step quant_train "$python $quant_train $data_args $geometry --calibration_images=$calibration --overwrite"
run_step eval "$python $eval_cmd $data_args"
run_step export "$python $export_cmd --category=$category --save_path=$save_path --save_dir=$save_dir"
IFS='|' read -r -a thread_list <<< "$threads"
IFS='|' read -r -a batch_list <<< "$batches"
for t in "${thread_list[@]}"; do
    for bs in "${batch_list[@]}"; do
        tag="infer_int8_threads_${t}_bs_${bs}"
        run_step "$tag" "$python $inference --model_file=$save_dir/model_int8.onnx --input_file=$infer_input --cpu_threads=$t --batch_size=$bs --save_path=${LOG_PATH}/${tag}"
        grep -h "^benchmark:" "${LOG_PATH}/${tag}.log" | sed 's/^/    /'
    done
done
if [ $failed -ne 0 ]; then
    echo "TIPC ${model_name} PTQ: FAILED (see ${status_log})"
    exit 1
fi
echo "TIPC ${model_name} PTQ: all steps passed (see ${status_log})"
