#!/usr/bin/env bash
# The committed faithfulness report (docs/results/): every registered method on the built-in model,
# 30 samples per task. Resumable: run it again after an interruption and it carries on where it stopped.
#   bash scripts/eval_report.sh            # THREADS=2 to use two cores
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
OUT=docs/results
METHODS=$(.venv/bin/python -c "from spantrace.methods.registry import list_methods; print(','.join(list_methods()))")
N="${N:-30}"
mkdir -p "$OUT"
run() {  # task, extra options
  local task=$1; shift
  echo "== $task ($(date -u +%H:%M:%S))"
  /usr/bin/time -a -o "$OUT/timings.txt" -f "$task: %e s wall, %M KiB peak" \
    .venv/bin/spantrace eval --task "$task" -n "$N" --methods "$METHODS" --out "$OUT/$task.jsonl" -q "$@"
}
run niah_single --length 160 --max-new-tokens 16
run gsm8k --max-new-tokens 64
run vt --length 160 --max-new-tokens 24
.venv/bin/spantrace report "$OUT"/*.jsonl --markdown "$OUT/report.md" --html "$OUT/report.html" --plots "$OUT"
