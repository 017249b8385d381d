#!/usr/bin/env bash
# Carry unfinished runs between sessions through checkpoints/in-progress/ (runs/ is not committed):
#   bench/carry.sh save      stop the ladder's lanes and their runs (SIGTERM: each saves its exact state), then copy
#                            every unfinished run's config, metrics, status, last.pt and best.pt (its best validated
#                            model so far) to checkpoints/in-progress/, and every finished one's with its report.json
#                            and best.pt (until its model ships: bench/shipped.py)
#   bench/carry.sh restore   copy each carried run back to runs/ unless runs/ already holds it at a later epoch
#                            (at a session's start, before any lane runs)
# Commit checkpoints/in-progress/ after save.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRIED=checkpoints/in-progress
epoch() { python3 -c "import json, sys; print(json.load(open(sys.argv[1])).get('epoch', 0))" "$1" 2>/dev/null || echo -1; }
case ${1:-} in
    save)
        pkill -TERM -f "bench/ladder.sh" || true  # the lanes first, so that none starts the next run
        trainers="mobilenet train --resume runs/|mobilenet train --data .* --out runs/"
        pkill -TERM -f "$trainers" || true
        pkill -CONT -f "$trainers" || true  # a paused run acts on the signal once it runs again
        while pgrep -f "$trainers" > /dev/null; do sleep 2; done
        for run in runs/*/; do
            run=${run%/}; name=$(basename "$run")
            if [ -f "$run/report.json" ] && .venv/bin/python bench/shipped.py "$run"; then
                rm -rf "${CARRIED:?}/$name"  # its model ships in checkpoints/: nothing left to carry
                continue
            elif [ -f "$run/report.json" ] && [ -f "$run/best.pt" ]; then  # finished: the model and its record
                kept="report.json best.pt"                                  # (a validating twin's export reads them)
            elif [ -f "$run/last.pt" ]; then  # unfinished: its state, and its best validated model so far
                kept="last.pt $( [ -f "$run/best.pt" ] && echo best.pt || true)"
            else
                continue
            fi
            rm -rf "${CARRIED:?}/$name" && mkdir -p "$CARRIED/$name"
            for file in config.json metrics.jsonl status.json $kept; do cp "$run/$file" "$CARRIED/$name/"; done
            echo "carried $name at epoch $(epoch "$run/status.json") ($kept)"
        done ;;
    restore)
        for carried in "$CARRIED"/*/; do
            carried=${carried%/}; name=$(basename "$carried")
            [ -f "$carried/last.pt" ] || [ -f "$carried/report.json" ] || continue  # teachers/
            if [ "$(epoch "runs/$name/status.json")" -ge "$(epoch "$carried/status.json")" ]; then
                echo "runs/$name is at epoch $(epoch "runs/$name/status.json") already: kept"
            else
                mkdir -p runs && rm -rf "runs/$name" && cp -r "$carried" "runs/$name" && echo "restored $name"
            fi
        done ;;
    *) echo "usage: bench/carry.sh save|restore" >&2; exit 2 ;;
esac
