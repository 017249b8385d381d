#!/usr/bin/env bash
# The whole width ladder on one lent GPU (see the device tool), after bench/gpu_check.sh: for each α, the
# validating twin (a seeded 5,000-image validation split held out) and the model to ship (all 50,000 images,
# --val-size 0), the same recipe for both, all runs at once: small models leave a big GPU mostly idle, so
# eight processes share it better than one after another.
# Results: $OUT/<run>/ (config, metrics, status, report, best.pt; no last.pt, to keep what comes back small).
# Then, on the CPU machine: python -m mobilenet export $OUT/full-a1.0 checkpoints/mobilenet_v1_a1.0.pt
# --validated-by $OUT/twin-a1.0 …, export-onnx, bench/ood.py --write --twin … (DEVELOPERS.md, shipping).
#   EPOCHS=120 ALPHAS="1 0.75 0.5 0.25" bash bench/gpu_ladder.sh [extra train options, e.g. --tta flip-translate]
#   SMOKE=1 bash bench/gpu_ladder.sh             # a minute on any machine (CPU too): checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-ladder}
DATA=${DATA:-$( [ -f data/cifar10-train-jpeg.zip ] && echo data/cifar10-train-jpeg.zip || echo ../shared/data/cifar10-train-jpeg.zip )}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
EPOCHS=${EPOCHS:-120}
ALPHAS=${ALPHAS:-1 0.75 0.5 0.25}
DEVICE=cuda
DATA_ROOT=${DATA_ROOT:-data}  # the decode cache stays out of $OUT, which comes back from the GPU machine
COMMON=(--data "$DATA" --epochs "$EPOCHS" --data-root "$DATA_ROOT" --json "$@")
if [ "${SMOKE:-0}" = 1 ]; then
    ALPHAS="0.25" DEVICE=auto COMMON=(--data "$DATA" --epochs 1 --data-root "$DATA_ROOT" --json --subset 2000 "$@")
fi
mkdir -p "$OUT"
# Decode the JPEGs once into the cache all runs read (a run would otherwise decode them itself, eight at once).
"$PY" -c "from mobilenet import data; data.load('$DATA', 'train', 32, root='$DATA_ROOT')"
pids=()
for alpha in $ALPHAS; do
    for kind in twin full; do
        run="$OUT/$kind-a$alpha"
        split=(--val-size 5000)
        [ "$kind" = full ] && split=(--val-size 0)
        [ "${SMOKE:-0}" = 1 ] && [ "$kind" = twin ] && split=(--val-size 200)
        rm -rf "$run"
        "$PY" -m mobilenet train --device "$DEVICE" --alpha "$alpha" "${split[@]}" "${COMMON[@]}" --out "$run" \
            > "$run.jsonl" 2> "$run.err" &
        pids+=($!)
    done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
rm -f "$OUT"/*/last.pt
for alpha in $ALPHAS; do
    "$PY" bench/time_to_accuracy.py "$OUT/twin-a$alpha" --target 0.90 || true
done
tail -n 3 "$OUT"/*.err
exit $status
