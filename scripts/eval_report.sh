#!/usr/bin/env bash
# The committed faithfulness report (docs/results/): every registered method on the built-in model,
# 30 samples per task. Resumable: run it again after an interruption and it carries on where it stopped.
#   bash scripts/eval_report.sh                 # every task, one after the other; THREADS=2 for two cores
#   bash scripts/eval_report.sh gsm8k vt        # only these tasks
#   DEVICE=cuda PARALLEL=1 bash scripts/eval_report.sh   # on a GPU, every task as its own process at once
# SPANTRACE (the command, default .venv/bin/spantrace), OUT (default docs/results) and N (default 30)
# can be set too. A task's options below decide its rows: resuming with other options is refused.
# (hotpotqa: --measures token keeps the committed rows' settings; source-level rows: docs/evaluation.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
SPANTRACE="${SPANTRACE:-.venv/bin/spantrace}"
OUT="${OUT:-docs/results}"
N="${N:-30}"
METHODS="${METHODS:-all}"
DEVICE_OPTION=()
[ -n "${DEVICE:-}" ] && DEVICE_OPTION=(--device "$DEVICE")

declare -A OPTIONS=(
  [niah_single]="--length 160 --max-new-tokens 16"
  [niah_mq_q2]="--length 256 --max-new-tokens 32"
  [niah_mv_v2]="--length 192 --max-new-tokens 32"
  [vt]="--length 384 --max-new-tokens 32"
  [gsm8k]="--max-new-tokens 64"
  [morehopqa]="--max-new-tokens 32"
  [hotpotqa]="--max-new-tokens 32 --measures token"
)
ORDER=(niah_single gsm8k vt niah_mq_q2 niah_mv_v2 morehopqa hotpotqa)
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=("${ORDER[@]}")
mkdir -p "$OUT"

run() {  # one task, resumed from its file
  local task=$1 started
  [ -n "${OPTIONS[$task]+set}" ] || { echo "unknown task $task; known: ${ORDER[*]}" >&2; return 2; }
  started=$(date +%s)
  echo "== $task ($(date -u +%H:%M:%S))"
  # shellcheck disable=SC2086  # the options are words
  $SPANTRACE eval --task "$task" -n "$N" --methods "$METHODS" --out "$OUT/$task.jsonl" -q \
    "${DEVICE_OPTION[@]}" ${OPTIONS[$task]}
  echo "$task: $(( $(date +%s) - started )) s wall${DEVICE:+ on $DEVICE}, n=$N" >> "$OUT/timings.txt"
  echo "== $task done ($(date -u +%H:%M:%S))"
}

if [ "${PARALLEL:-0}" = "1" ]; then
  pids=()
  for task in "${TASKS[@]}"; do run "$task" > "$OUT/$task.log" 2>&1 & pids+=($!); done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [ "$status" = 0 ] || { echo "a task failed: see $OUT/*.log" >&2; exit 1; }
else
  for task in "${TASKS[@]}"; do run "$task"; done
fi
$SPANTRACE report "$OUT"/*.jsonl --markdown "$OUT/report.md" --html "$OUT/report.html" --plots "$OUT"
