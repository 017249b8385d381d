#!/usr/bin/env bash
# Recipe study at α=0.25, 30 epochs, seed 0, one thread (the other core stays free): the default recipe
# against EMA of the weights, Cutout, both, both with peak lr 0.4, and label smoothing 0.2.
# Chart: python bench/recipe_study.py runs/study-a0.25-* --out bench/results/recipe_study_ema_cutout.html
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-train-jpeg.zip}
run() {
    local name=$1; shift
    [ -f "runs/$name/report.json" ] && return 0
    if [ -f "runs/$name/last.pt" ]; then
        OMP_NUM_THREADS=1 .venv/bin/python -m mobilenet train --resume "runs/$name" --json >> "runs/$name.log" 2>&1
    else
        OMP_NUM_THREADS=1 .venv/bin/python -m mobilenet train --data "$DATA" --alpha 0.25 --epochs 30 \
            --out "runs/$name" --json "$@" > "runs/$name.log" 2>&1
    fi
}
run study-a0.25-ema-cutout8 --ema 0.999 --cutout 8
run study-a0.25-ema --ema 0.999
run study-a0.25-cutout8 --cutout 8
run study-a0.25-ema-cutout8-lr0.4 --ema 0.999 --cutout 8 --lr 0.4
run study-a0.25-ls0.2 --label-smoothing 0.2
run study-a0.25-default
