#!/usr/bin/env bash
# Start a named run under runs/, or resume it where it stopped, or do nothing when it has finished:
#   THREADS=1 bench/run_once.sh NAME [train options…]      (DATA: the training source, the shared zip by default)
# Runs that go on in a later session keep their state in runs/NAME (last.pt), so the same line picks them up.
# Exits 0 only when the run has finished: a queue built on it stops at a run that was stopped (SIGTERM) or failed.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-train-jpeg.zip}
export OMP_NUM_THREADS=${THREADS:-1}
name=$1; shift
[ -x .venv/bin/python ] || { echo "no .venv here: run the README's test install first" >&2; exit 2; }
[ -f "runs/$name/report.json" ] && exit 0
mkdir -p runs  # git ignores it: a fresh checkout has none, and the log is written before train makes the run
if [ -f "runs/$name/last.pt" ]; then
    # a run may have started elsewhere (a GPU lease): its data and device are this machine's
    .venv/bin/python -m mobilenet train --resume "runs/$name" --data "$DATA" --device "${DEVICE:-auto}" --json \
        >> "runs/$name.log" 2>&1
else
    .venv/bin/python -m mobilenet train --data "$DATA" --out "runs/$name" --json "$@" > "runs/$name.log" 2>&1
fi
[ -f "runs/$name/report.json" ]
