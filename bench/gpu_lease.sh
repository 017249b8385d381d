#!/usr/bin/env bash
# One short GPU lease (the device tool: 15 minutes, one call of at most 10) spent on the ladder's stopped runs.
# The training zip travels xz-compressed (its JPEG headers repeat: 52.7 → 15.9 MB) and the runs' last.pt shrunk by
# bench/shrink.py (28 → 23 MB), so that they fit the 64 MiB a call may carry; the shipped checkpoints stay behind.
#   bash bench/gpu_lease.sh prepare runs/NAME…  # here: .gpu/ (git-ignored) with the zip and those stopped runs
#   device run: bash bench/gpu_lease.sh resume  (carry .gpu: the runs go on there, bench/gpu_check.sh beside them;
#               at most 8 files come back from $OUT)
#   bash bench/gpu_lease.sh unpack DIR  # here: the runs that came back, from DIR's results.tar.part-*, in runs/gpu
# At DEADLINE seconds the runs still going are stopped (they save last.pt, to resume anywhere).
set -uo pipefail
cd "$(dirname "$0")/.."
ZIP=data/cifar10-train-jpeg.zip
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}  # here; the GPU machine has no .venv

prepare() {  # RUN…: the zip and the named stopped runs
    local run to carried code
    [ $# -gt 0 ] || { echo "name the stopped runs to carry: bench/gpu_lease.sh prepare runs/NAME…" >&2; exit 2; }
    for run in "$@"; do
        for file in config.json status.json metrics.jsonl last.pt; do
            [ -f "$run/$file" ] || { echo "$run has no $file: not a stopped run" >&2; exit 2; }
        done
        [ ! -f "$run/.writer.lock" ] || flock -n "$run/.writer.lock" true \
            || { echo "$run is being trained here: stop it first (bench/carry.sh save)" >&2; exit 2; }
    done
    grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/data
    xz -9e -T2 -c "${DATA:-../shared/data/cifar10-train-jpeg.zip}" > .gpu/$ZIP.xz
    for run in "$@"; do  # its targets are in last.pt: the teachers stay here; best.pt is chosen again there
        to=.gpu/runs/gpu/$(basename "$run")
        mkdir -p "$to"
        cp "$run/config.json" "$run/status.json" "$to/"
        xz -9 -c "$run/metrics.jsonl" > "$to/metrics.jsonl.xz"
        "$PY" bench/shrink.py pack "$run/last.pt" "$to/last.pt.sxz" || exit 1
    done
    carried=$(find .gpu -type f -print0 | du -cb --files0-from=- | tail -1 | cut -f1)
    code=$(git ls-files -z -- ':!checkpoints' | du -cb --files0-from=- | tail -1 | cut -f1)
    echo "$carried bytes in .gpu, $code of code: $((carried + code)) of the $((64 << 20)) a call carries"
    [ $((carried + code)) -le $((64 << 20)) ] || { echo "too much for one call: carry fewer runs" >&2; exit 2; }
}

running() { for p in "$1"/*.pid; do kill -0 "$(cat "$p")" 2>/dev/null && return 0; done; return 1; }

setup() {  # OUT: the log, versions, the carried files unpacked, the zip decoded once for all runs
    mkdir -p "$1" runs
    exec > >(tee "$1/lease.log") 2>&1
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__, torch.cuda.is_available())"
    python3 - <<'EOF'
import lzma, pathlib, shutil
import sys; sys.path.insert(0, "bench"); import shrink
for carried in sorted(p for p in pathlib.Path(".gpu").rglob("*") if p.is_file()):
    target = pathlib.Path(*carried.relative_to(".gpu").parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    if carried.suffix == ".sxz":
        shrink.unpack(carried, target.with_suffix(""))
    elif carried.suffix == ".xz":
        with lzma.open(carried) as src, open(target.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        shutil.copyfile(carried, target)
EOF
    python3 -c "from mobilenet import data; data.load('$ZIP', 'train', 32, root='data')" 2>/dev/null
}

resume() {  # the stopped runs carried in runs/gpu go on until DEADLINE, bench/gpu_check.sh beside them
    local out=${OUT:-bench/results/gpu-lease} deadline=${DEADLINE:-200}
    [ -d .gpu/runs/gpu ] || { echo "no runs carried: bench/gpu_lease.sh prepare runs/NAME… first" >&2; exit 2; }
    setup "$out"
    export OMP_NUM_THREADS=4
    for run in runs/gpu/*/; do
        python3 -m mobilenet train --resume "$run" --data "$ZIP" --data-root data --device "${DEVICE:-cuda}" \
            --json >> "${run%/}.log" 2>&1 &
        echo "$!" > "${run%/}.pid"
    done
    # its own process group (a negative pid), so that finish stops its trainer too, and its EXIT trap packs
    OUT=runs/gpu/check DATA=$ZIP DATA_ROOT=data PY=python3 setsid bash bench/gpu_check.sh > runs/gpu/check.log 2>&1 &
    echo "-$!" > runs/gpu/check.pid
    while running runs/gpu && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
    finish runs/gpu
    cat runs/gpu/check/*.md 2>/dev/null
    pack "$out" runs/gpu
}

finish() {  # RUNS: stop what still runs there (each saves last.pt) and show how each log ends
    echo "## $SECONDS s: stopping what still runs"
    for p in "$1"/*.pid; do kill -TERM "$(cat "$p")" 2>/dev/null; done
    for _ in $(seq 30); do running "$1" || break; sleep 1; done
    for log in "$1"/*.log; do echo "### $log"; tail -n 2 "$log" | cut -c 1-400; done
}

pack() {  # OUT RUNS: finished runs whole (no last.pt), unfinished runs' last.pt (shrunk), tars, while 60 MiB last
    python3 - "$1" "$2" <<'EOF'
import sys, tarfile, pathlib
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, "bench")
import shrink
out, folder = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = sorted(p for p in folder.iterdir() if p.is_dir())
files = [f for r in runs for f in r.iterdir() if f.is_file()]  # gpu_check.sh's run folders are in its runs.tar
small = [f for f in files if f.suffix not in (".pt", ".sxz", ".tar")] + sorted(folder.glob("*.log"))
packed = [f for f in files if f.suffix == ".tar"]  # bench/gpu_check.sh's runs: after the ladder's states
best = [r / "best.pt" for r in runs if (r / "report.json").exists() and (r / "best.pt").exists()]
unfinished = [r for r in runs if not (r / "report.json").exists()]
states = [r / "last.pt" for r in unfinished if (r / "last.pt").exists()]
with ThreadPoolExecutor() as pool:  # lzma lets go of the GIL while it compresses
    list(pool.map(shrink.pack, states, [f.with_suffix(".pt.sxz") for f in states]))
last = [f.with_suffix(".pt.sxz") for f in states]
last += [r / "best.pt" for r in unfinished if (r / "best.pt").exists()]  # its best validated model so far
budget, chosen = 60 << 20, []
for f in small + sorted(best, key=lambda f: f.stat().st_size) + last + packed:
    if f.stat().st_size <= budget:
        chosen.append(f)
        budget -= f.stat().st_size
    else:
        print("left behind:", f)
with tarfile.open(out / "results.tar", "w") as tar:
    for f in chosen:
        tar.add(f, arcname=f.relative_to(folder))
EOF
    split -b 15M -d "$1/results.tar" "$1/results.tar.part-" && rm "$1/results.tar"
    ls -la "$1"
}

unpack() {
    [ ! -e runs/gpu ] || { echo "runs/gpu holds an earlier lease's runs: move them to runs/ first" >&2; exit 2; }
    mkdir -p runs/gpu
    cat "$1"/results.tar.part-* | tar -x -f - -C runs/gpu
    for packed in runs/gpu/*/last.pt.sxz; do
        [ -e "$packed" ] && "$PY" bench/shrink.py unpack "$packed" "${packed%.sxz}" && rm "$packed"
    done
    ls runs/gpu
}

"${1:?usage: bench/gpu_lease.sh prepare RUN…|resume|unpack DIR}" "${@:2}"
