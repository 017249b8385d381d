#!/usr/bin/env bash
# The recipe study, one run after another, one thread each by default (THREADS=2 when nothing else runs).
# Each run resumes where it stopped, so the queue can be restarted at any time (and in a later session).
#   α=1, 40 epochs: EMA 0.999 + Cutout 12, against the shipped 40-epoch default run (89.70%)
#   (done, in BENCHMARKS: α=0.25 with EMA 0.999, with EMA 0.999 + Cutout 8, distilled from α=1;
#    α=1 with EMA 0.999 + Cutout 12)
#   α=1, 120 epochs, flip-translate TTA, distilled from the three α=1 teachers: the validating twin of the next
#   shipped α=1 model (then the same config with --val-size 0, see DEVELOPERS.md)
# Append new runs at the end only: bash reads a running script as it goes.
# Table and chart: python bench/recipe_study.py runs/study-a0.25-* --out bench/results/recipe_study_ema_cutout.html
# Flip-translate TTA on any finished run: python bench/tta.py runs/study-*
set -euo pipefail
cd "$(dirname "$0")/.."
run() { bench/run_once.sh "$@"; }
run study-a1.0-ema-cutout12 --alpha 1 --epochs 40 --ema 0.999 --cutout 12
run study-a0.25-distill --alpha 0.25 --epochs 30 --teacher checkpoints/mobilenet_v1_a1.0.pt
T=checkpoints/in-progress/teachers
run twin-a1.0-distill3-120 --alpha 1 --epochs 120 --tta flip-translate --val-every 4 \
    --teacher "$T/a1.0-fast-70.pt,$T/a1.0-fast-40.pt,$T/a1.0-cutout12-40.pt"
# Beside it, one thread each (session 7 on): its full-data run, the model that ships
#   THREADS=1 bench/run_once.sh full-a1.0-distill3-120 --config runs/twin-a1.0-distill3-120/config.json --val-size 0
