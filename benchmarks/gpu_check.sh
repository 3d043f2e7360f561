#!/usr/bin/env bash
# The GPU check: what a researcher's GPU run meets first, in one command of at most ten minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the project's venv
#
# On a CUDA machine it runs, each part under its own time limit, and prints one table:
#   1. tests/test_precision.py on the GPU (every trainer x fp32/fp16/amp on the micro-CLIPs;
#      amp with a GradScaler), FSCLIP_TEST_DEVICE=cuda;
#   2. tests/test_real_size.py -m realsize, fp16 cases (every trainer at RN50 and ViT-B/16 size,
#      ViT-L/14 for the frozen-feature family, 100 classes, 224 px);
#   3. benchmarks/safe_grid.py on cuda (batched SAFE grid against one setting at a time; the
#      >= 5x target);
#   4. benchmarks/real_size.py for CoOp, CoCoOp, VPT_CLIP and VLP_CLIP in fp16 and amp (the
#      CoOp and DPT training steps at real size);
#   5. benchmarks/extract_throughput.py (feature extraction against the loader's decode limit).
# Logs go to $GPU_CHECK_OUT (default ./gpu_check), one file per part.
# Without CUDA it says so in one line and exits 0; with CUDA the exit code is 1 when a part failed
# or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_OUT:-gpu_check}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
mkdir -p "$OUT"
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__)'
export FSCLIP_TEST_DEVICE=cuda FSCLIP_CPU_HALF=1
ROWS=()
FAILED=0
part() {  # part NAME SECONDS COMMAND...: run, keep the log, add a table row
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
    local status=ok; [ $rc -eq 124 ] && status="timed out (${limit}s)"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (rc $rc)"
    [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
    local summary
    summary=$(grep -E "passed|failed|extract / decode|speed-up|x faster|ratio" "$OUT/$name.log" | tail -1 | cut -c1-110)
    ROWS+=("$(printf '%-14s %5ss  %-20s %s' "$name" "$((SECONDS - t0))" "$status" "$summary")")
}
part precision 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py
part realsize 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_real_size.py -m realsize -k fp16
part safe_grid 60 "$PY" benchmarks/safe_grid.py --device cuda
part steps 110 "$PY" benchmarks/real_size.py --trainers CoOp CoCoOp VPT_CLIP VLP_CLIP --releases ViT-B/16 RN50 --precs fp16 amp
part extract 50 "$PY" benchmarks/extract_throughput.py --release ViT-B/16 --prec fp16

echo
printf '%-14s %6s  %-20s %s\n' part time status summary
for row in "${ROWS[@]}"; do echo "$row"; done
echo
echo "== training steps at real size (benchmarks/real_size.py)"
grep -vE "^(Note|\s*$)" "$OUT/steps.log" | tail -20
echo "logs: $OUT/"
[ $FAILED -eq 0 ]
