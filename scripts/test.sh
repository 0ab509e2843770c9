#!/usr/bin/env bash
# Install everything and run the default test suite (then the slow tier when asked: SPANTRACE_SLOW=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check spantrace tests benchmarks
.venv/bin/python -m pytest -q
if [ "${SPANTRACE_SLOW:-0}" = "1" ]; then
  .venv/bin/python -m pytest -q -m slow
fi
