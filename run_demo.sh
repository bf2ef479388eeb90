#!/usr/bin/env bash
# Fresh machine with Python 3: set up .venv, generate the demo data, fit and evaluate OrthoAD.
# The demo runs offline, so it uses a RANDOMLY initialised resnet18 (--no-pretrained): its figures
# show the pipeline works, not what ImageNet weights achieve.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
.venv/bin/python -m datasets.synthetic --out demo_data
echo "NOTE: the demo uses random backbone weights (--no-pretrained): no download needed."
.venv/bin/python train.py --data_path demo_data --category all --method ortho --arch resnet18 \
  --k 100 --no-pretrained --eval --eval_PRO --save_pic=True --report "$@"
