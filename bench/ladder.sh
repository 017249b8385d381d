#!/usr/bin/env bash
# The width ladder's shipped models on this CPU (session 8 on): one recipe for every α (the default, 120 epochs,
# flip-translate TTA, distilled with weight 0.5 from the three α=1 teachers in checkpoints/in-progress/teachers),
# then a second α=1 generation: the same recipe distilled from four teachers (the three and the first generation's
# twin: 91.54% together against the three's 91.06%), the measured next step toward 92%.
# Each α is a pair of runs: its validating twin (the seeded 5,000 images held out; the card gives its best validated
# epoch, which should be its last) and the model that ships (the twin's config on all 50,000 images, once the twin
# has started). Two lanes run them side by side, one thread each (two one-thread runs train faster together than one
# two-thread run):
#   THREADS=1 setsid nohup nice -n 5 bench/ladder.sh > /tmp/lane-1.log 2>&1 &
#   THREADS=1 setsid nohup nice -n 5 bench/ladder.sh > /tmp/lane-2.log 2>&1 &
# A lane takes the first run in the queue (the quicker widths first, each twin before its full run) that has not
# finished and that the other lane does not hold (a lock on runs/NAME.lane), so both stay busy to the end. Each run
# resumes where it stopped (bench/run_once.sh); a lane ends at a run that was stopped or failed, or when none is left
# (the other lane then goes on to it in its turn: to pause the ladder, stop both lanes, as bench/carry.sh save does).
# Then: DEVELOPERS.md, "Shipping a model" (export --validated-by the twin, export-onnx, bench/ood.py --write); the
# second α=1 generation replaces the first only if its twin validates higher (the first's: 91.18%; then drop the
# first's entry from QUEUE: its runs no longer count as shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
T=checkpoints/in-progress/teachers
TEACHERS3="$T/a1.0-fast-70.pt,$T/a1.0-fast-40.pt,$T/a1.0-cutout12-40.pt"
TEACHERS4="$TEACHERS3,$T/a1.0-distill3-120.pt"
QUEUE=("1.0 distill3 $TEACHERS3" "0.25 distill3 $TEACHERS3" "0.5 distill3 $TEACHERS3" "0.75 distill3 $TEACHERS3"
       "1.0 distill4 $TEACHERS4")  # α, the config's name, its teachers

take() {  # runs the next free run: 0; none left: 1; those left wait for a twin's start or the other lane: 2
    local left=1 entry alpha tag teachers twin run
    mkdir -p runs
    for entry in "${QUEUE[@]}"; do
        read -r alpha tag teachers <<< "$entry"
        twin=twin-a$alpha-$tag-120
        .venv/bin/python bench/shipped.py "runs/$twin" && continue  # this pair's model shipped from its twin: done
        for run in "$twin" "full-a$alpha-$tag-120"; do
            [ -f "runs/$run/report.json" ] && continue
            left=2
            [ "$run" = "$twin" ] || [ -f "runs/$twin/config.json" ] || continue
            exec 9> "runs/$run.lane" || exit 1
            flock -n -E 75 9 || { [ $? = 75 ] && continue; echo "cannot lock runs/$run.lane" >&2; exit 1; }
            if [ -f "runs/$run/.writer.lock" ] && ! flock -n "runs/$run/.writer.lock" true; then
                exec 9>&-
                continue  # a trainer started by hand or by the app has it: not this lane's
            fi
            if [ "$run" = "$twin" ]; then
                bench/run_once.sh "$run" --alpha "$alpha" --epochs 120 --tta flip-translate --val-every 4 \
                    --teacher "$teachers" || exit 1
            else
                bench/run_once.sh "$run" --config "runs/$twin/config.json" --val-size 0 || exit 1
            fi
            exec 9>&-
            return 0
        done
    done
    return $left
}

while true; do
    left=0
    take || left=$?
    [ $left = 1 ] && { echo "the ladder's runs have all finished"; exit 0; }
    [ $left = 2 ] && sleep "${WAIT:-300}"
done
