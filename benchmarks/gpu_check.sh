#!/usr/bin/env bash
# One prepared check for a lent GPU machine, under 8 minutes in all:
#   1. ResNet-50 at 224 px: training images/s (train + validation pass) of ffr's path (cache on the
#      GPU, channels-last, fp32 and bf16/fp16 autocast) against the reference loop (per-sample PIL
#      decode + torchvision transforms, DataLoader with 2 workers, fp32);
#   2. the input path alone at 224 px (bench_loader);
#   3. the synthesis benchmark on the tiny pipeline (bench_synthesis).
# Every figure goes into one JSON file; each step has its own time limit, so one failing step
# still leaves the others' figures.
#
#   benchmarks/gpu_check.sh [OUT.json]        # default: $OUT/gpu_check.json, else ./gpu_check.json
#   DEVICE=cpu N_TRAIN=32 N_VAL=16 BATCH=8 N_LOADER=64 benchmarks/gpu_check.sh /tmp/x.json   # dry run
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
N_TRAIN=${N_TRAIN:-4096}
N_VAL=${N_VAL:-1024}
BATCH=${BATCH:-128}
N_LOADER=${N_LOADER:-2048}
out=${1:-${OUT:-.}/gpu_check.json}
work=$(mktemp -d "${TMPDIR:-/tmp}/ffr-gpu-check.XXXXXX")
export FFR_BENCH_DIR="$work/bench" PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log and exit status
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$work/$name.log" 2>&1
  echo $? >"$work/$name.rc"
  tail -n 3 "$work/$name.log"
}

step env 60 "$PY" -c "
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({'torch': torch.__version__, 'cuda': cuda,
                  'gpu': torch.cuda.get_device_name(0) if cuda else None,
                  'bf16': cuda and torch.cuda.is_bf16_supported()}))
assert cuda or '$DEVICE' != 'cuda', 'no CUDA device visible to torch'
"
if [ "$(cat "$work/env.rc")" = 0 ]; then
  step train_resnet50 225 "$PY" "$here/bench_train.py" --device "$DEVICE" --models resnet50:224 \
    --n-train "$N_TRAIN" --n-val "$N_VAL" --batch-size "$BATCH" --repeats 3 --json "$work/train_resnet50.json"
  step loader_224 75 "$PY" "$here/bench_loader.py" --device "$DEVICE" --sizes 224 --n-large "$N_LOADER" \
    --repeats 2 --json "$work/loader_224.json"
fi
step synthesis 90 "$PY" "$here/bench_synthesis.py"

"$PY" - "$work" "$out" "$t0" <<'EOF'
import json, sys, time
from pathlib import Path

work, out, t0 = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
report = {"seconds": round(time.time() - t0, 1), "steps": {}}
for rc in sorted(work.glob("*.rc")):
    name = rc.stem
    log = (work / f"{name}.log").read_text(errors="replace").splitlines()
    entry = {"exit_status": int(rc.read_text().strip() or -1), "summary": log[-1] if log else "",
             "log_tail": log[-25:]}
    figures = work / f"{name}.json"
    if figures.is_file():
        entry["figures"] = json.loads(figures.read_text())
    if name == "env" and log:
        try:
            entry["figures"] = json.loads(log[0])
        except ValueError:
            pass
    report["steps"][name] = entry
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=2) + "\n")
for name, entry in report["steps"].items():
    print(f"  {name}: exit {entry['exit_status']}: {entry['summary']}")
print(f"gpu check: {len(report['steps'])} steps in {report['seconds']:.0f}s -> {out}")  # the summary, last
EOF
rm -rf "$work"
