#!/usr/bin/env bash
# The recipe study, one run after another, one thread each by default (THREADS=2 when nothing else runs).
# Each run resumes where it stopped, so the queue can be restarted at any time (and in a later session).
# Done, in BENCHMARKS ("Toward 92%"): α=0.25 with EMA 0.999, with EMA 0.999 + Cutout 8, distilled from α=1;
# α=1 with EMA 0.999 + Cutout 12. The recipe they chose trains the shipped models: bench/ladder.sh.
# Append new runs at the end only: bash reads a running script as it goes.
# Table and chart: python bench/recipe_study.py runs/study-a0.25-* --out bench/results/recipe_study_ema_cutout.html
# Flip-translate TTA on any finished run: python bench/tta.py runs/study-*
set -euo pipefail
cd "$(dirname "$0")/.."
run() { bench/run_once.sh "$@"; }
run study-a1.0-ema-cutout12 --alpha 1 --epochs 40 --ema 0.999 --cutout 12
# its teacher was the shipped α=1 of the time (70 epochs, the split held out), kept as teachers/a1.0-fast-70.pt
run study-a0.25-distill --alpha 0.25 --epochs 30 --teacher checkpoints/in-progress/teachers/a1.0-fast-70.pt
