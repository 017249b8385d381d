#!/usr/bin/env bash
# The first minutes on a lent GPU machine (see the device tool): what the GPU gives this project, in one run.
#   1. the machine and versions
#   2. a training run on the GPU (bf16 autocast, channels_last, batch 512) with the study's recipe:
#      epoch time, time to 90% and to 92% validation accuracy (bench/time_to_accuracy.py)
#   3. GPU inference latency and throughput of the shipped α=1 model, or of the model it trained where the
#      shipped ones stayed behind (bench/gpu_inference.py)
#   4. a 1-GPU torchrun run (the DDP path), two epochs
# Results land in $OUT (or bench/results/gpu/): five summaries and runs.tar (the runs and logs; best.pt of the first
# run only, under the 16 MiB a file may weigh),
# since the device tool brings back at most 8 files; the decoded data stays outside ($DATA_ROOT). Usage:
#   EPOCHS=40 bash bench/gpu_check.sh            # DATA defaults to the shared JPEG zip
#   SMOKE=1 bash bench/gpu_check.sh              # a minute on any machine (CPU too): checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
DATA_ROOT=${DATA_ROOT:-data}
DATA=${DATA:-$( [ -f data/cifar10-train-jpeg.zip ] && echo data/cifar10-train-jpeg.zip || echo ../shared/data/cifar10-train-jpeg.zip )}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
EPOCHS=${EPOCHS:-40}
BATCH=${BATCH:-512}
LR=${LR:-0.8}  # the default recipe's 0.2 at batch 128, scaled linearly with the batch
DEVICE=cuda
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
    EPOCHS=1 BATCH=64 LR=0.1 DEVICE=auto EXTRA=(--subset 2000 --val-size 200)
fi
mkdir -p "$OUT"
pack() {  # on any exit: what ran, in one file
    local parts=()
    for part in run run-ddp train.jsonl train-ddp.jsonl; do [ -e "$OUT/$part" ] && parts+=("$part"); done
    [ ${#parts[@]} -gt 0 ] && tar -C "$OUT" --exclude=last.pt --exclude=run-ddp/best.pt -cf "$OUT/runs.tar" "${parts[@]}" \
        && (cd "$OUT" && rm -rf "${parts[@]}")
    return 0
}
trap pack EXIT
trap 'exit 143' TERM  # stopped (bench/gpu_lease.sh at its deadline): the trainer saves, then this packs
{
    echo "## machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$OUT/machine.txt"

echo "## training: α=1, $EPOCHS epochs, batch $BATCH, lr $LR, EMA 0.999, Cutout 12, flip-translate TTA"
rm -rf "$OUT/run"
"$PY" -m mobilenet train --data "$DATA" --device "$DEVICE" --alpha 1 --epochs "$EPOCHS" --batch-size "$BATCH" \
    --lr "$LR" --ema 0.999 --cutout 12 --tta flip-translate --data-root "$DATA_ROOT" --out "$OUT/run" --json \
    "${EXTRA[@]}" > "$OUT/train.jsonl"
"$PY" bench/time_to_accuracy.py "$OUT/run" --target 0.90 | tee "$OUT/time_to_90.md"
"$PY" bench/time_to_accuracy.py "$OUT/run" --target 0.92 | tee "$OUT/time_to_92.md"

echo "## inference"
MODEL=${MODEL:-checkpoints/mobilenet_v1_a1.0.pt}
[ -f "$MODEL" ] || MODEL=$OUT/run  # the shipped models stayed behind: the model it trained above
"$PY" bench/gpu_inference.py --device "$DEVICE" --model "$MODEL" | tee "$OUT/inference.md"

echo "## torchrun, one process"
rm -rf "$OUT/run-ddp"
"$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m mobilenet train --data "$DATA" --device "$DEVICE" \
    --alpha 1 --epochs 2 --batch-size "$BATCH" --lr "$LR" --data-root "$DATA_ROOT" --out "$OUT/run-ddp" --json \
    "${EXTRA[@]}" > "$OUT/train-ddp.jsonl"
"$PY" bench/time_to_accuracy.py "$OUT/run-ddp" --target 0.5 | tee "$OUT/ddp.md"
