#!/usr/bin/env bash
# The width ladder's shipped models on this CPU (session 8 on): one recipe for every α (the default, 120 epochs,
# flip-translate TTA, distilled with weight 0.5 from the three α=1 teachers in checkpoints/in-progress/teachers),
# in two lanes side by side, one thread each (two one-thread runs train faster together than one two-thread run):
#   THREADS=1 setsid nohup nice -n 5 bench/ladder.sh twin > /tmp/twin-lane.log 2>&1 &
#   THREADS=1 setsid nohup nice -n 5 bench/ladder.sh full > /tmp/full-lane.log 2>&1 &
# The twin lane trains each α's validating twin (the seeded 5,000 images held out; the card gives its best validated
# epoch, which should be its last),
# the full lane the model that ships: the twin's config on all 50,000 images, started once the twin has started.
# Each run resumes where it stopped (bench/run_once.sh); a lane ends at a run that was stopped or failed.
# Then: DEVELOPERS.md, "Shipping a model" (export --validated-by the twin, export-onnx, bench/ood.py --write).
set -euo pipefail
cd "$(dirname "$0")/.."
lane=${1:?usage: bench/ladder.sh twin|full}
T=checkpoints/in-progress/teachers
for alpha in 1.0 0.25 0.5 0.75; do  # the quicker widths first: each ships as its pair of runs ends
    twin=twin-a$alpha-distill3-120
    .venv/bin/python bench/shipped.py "runs/$twin" && continue  # this width shipped from its twin: done
    case $lane in
        twin) bench/run_once.sh "$twin" --alpha "$alpha" --epochs 120 --tta flip-translate --val-every 4 \
                  --teacher "$T/a1.0-fast-70.pt,$T/a1.0-fast-40.pt,$T/a1.0-cutout12-40.pt" ;;
        full) until [ -f "runs/$twin/config.json" ]; do sleep 300; done
              bench/run_once.sh "full-a$alpha-distill3-120" --config "runs/$twin/config.json" --val-size 0 ;;
        *) echo "usage: bench/ladder.sh twin|full" >&2; exit 2 ;;
    esac
done
