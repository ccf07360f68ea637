#!/usr/bin/env bash
# The GPU checks of monai-jdt in one run (about 6-8 minutes on an H100/H200), for a session
# that is lent a GPU: the CUDA tests, then the GPU side of the loss, scoring and boundary
# benchmarks, each under its own time limit; a compact summary at the end (and in $OUT).
#
#   bash benchmarks/gpu/run.sh            # from the repository root, with the venv's python
#   PYTHON=/path/to/python OUT=/tmp/gpu bash benchmarks/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/plugin:$PWD/service${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/monai-jdt-gpu}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

say() { echo "$*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    say "== $name: rc=$rc ($((SECONDS - start)) s, limit $limit s)"
}

say "== GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
say "== torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())')"

# 1. every test marked gpu (CUDA losses, confusion matrix, scoring, boundary metrics, service)
step pytest-gpu 150 $PY -m pytest -q -m gpu -rs -p no:cacheprovider tests
# 2. losses, forward+backward on CUDA against MONAI's (2 x 4 x 128^3 and 2 x 14 x 96^3)
step losses-4x128 75 $PY benchmarks/bench_losses.py --device cuda --size 128 --batch 2 --classes 4 --repeats 20
step losses-14x96 75 $PY benchmarks/bench_losses.py --device cuda --size 96 --batch 2 --classes 14 --repeats 20
# 3. probability-map and label-map scoring on CUDA against the CPU path
step scoring 100 $PY benchmarks/gpu/bench_gpu_scoring.py --repeat 3
# 4. HD95 + NSD on CUDA against the CPU path (six, liver, fourteen labels)
step boundary 100 $PY benchmarks/bench_boundary.py --device cuda --skip MONAI,medpy,surface --repeat 3

say ""
say "== summary"
grep -E "passed|failed|error" "$OUT/pytest-gpu.log" | tail -3 | tee -a "$OUT/summary.txt"
grep -E "SKIPPED|FAILED" "$OUT/pytest-gpu.log" | head -10 | tee -a "$OUT/summary.txt"
for name in losses-4x128 losses-14x96 scoring boundary; do
    say "-- $name"
    grep -E "^\||^###|GPU|ratio|peak" "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    tail -3 "$OUT/$name.log" | grep -iE "error|Traceback" | tee -a "$OUT/summary.txt"
done
