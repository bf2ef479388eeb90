#!/usr/bin/env bash
# Prepare the data of a TIPC mode. No network needed for lite_train_lite_infer: the demo
# generator writes a small MVTec-layout data set.
# Usage: bash test_tipc/prepare.sh test_tipc/configs/OrthoAD/train_infer_python.txt lite_train_lite_infer
set -uo pipefail
source "$(dirname "$0")/common_func.sh"
FILENAME=${1:?usage: prepare.sh CONFIG MODE}
MODE=${2:?usage: prepare.sh CONFIG MODE}
check_args "$FILENAME" "$MODE"
python=$(config_value "$FILENAME" 3 python) || exit 2
raw=$(config_value "$FILENAME" 6 --data_path) || exit 2
data_path=$(mode_value "$raw" "$MODE" "$FILENAME" 6) || exit 2

if [ "$MODE" == "lite_train_lite_infer" ]; then
    rm -rf "$data_path"
    # rectangular 96 x 160 images: OrthoAD's config scores them whole (--input_size 96 160),
    # PaDiM's with the classic resize 128 + centre crop 112
    $python -m datasets.synthetic --out "$data_path" --categories brick --n_train 12 \
        --n_good 3 --n_defect 6 --size 160 --height 96 --seed 0 || exit 1
else
    if [ ! -d "$data_path" ]; then
        echo "test_tipc: error: $MODE needs MVTec AD at '$data_path'; download it from" \
             "https://www.mvtec.com/company/research/datasets/mvtec-ad and extract it there" >&2
        exit 2
    fi
    echo "using MVTec AD at $data_path"
fi
