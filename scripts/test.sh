#!/usr/bin/env bash
# Install everything and run the default test suite (then the slow tier when asked: SPANTRACE_SLOW=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report test drives the system's headless Chromium through Playwright (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) \
    || echo "warning: could not install chromium; the browser test of the HTML report will be skipped" >&2
fi
.venv/bin/ruff check spantrace tests benchmarks
# The package's floors (pyproject.toml [tool.importlinter]): no import cycle, no import from a floor above.
.venv/bin/lint-imports
.venv/bin/python -m pytest -q
if [ "${SPANTRACE_SLOW:-0}" = "1" ]; then
  .venv/bin/python -m pytest -q -m slow
fi
