#!/usr/bin/env bash
# Install everything and run the default test suite (then the slow tier when asked: SPANTRACE_SLOW=1).
# Under CI (CI set, as .ci/run does) a browser that cannot be installed fails the run instead of a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${CI:-}" in "" | 0 | false | False | FALSE | no) ci=0 ;; *) ci=1 ;; esac
bash scripts/setup.sh
# The browser tests drive the system's headless Chromium through Playwright (never `playwright install`):
# installed with apt-get as root, else through sudo when it can run without a password.
install_chromium() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium
  else
    return 1
  fi
}
if [ ! -x /usr/bin/chromium ] && ! install_chromium; then
  if [ "$ci" = 1 ]; then
    echo "error: could not install chromium (needs root or password-less sudo); CI must run the browser tests" >&2
    exit 1
  fi
  echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi
.venv/bin/ruff check spantrace tests benchmarks
# The package's floors (pyproject.toml [tool.importlinter]): no import cycle, no import from a floor above.
.venv/bin/lint-imports
# Tests write only to temporary folders: in a git checkout, the working tree's status must not change.
in_git=0
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  in_git=1
  status_before="$(git status --porcelain)"
fi
check_untouched() {
  if [ "$in_git" = 1 ] && [ "$(git status --porcelain)" != "$status_before" ]; then
    echo "error: the tests changed the working tree (git status --porcelain differs); write to tmp_path instead" >&2
    exit 1
  fi
}
# The skip reasons are listed at the end (tests/conftest.py); under CI any but the allowed ones fail the run.
.venv/bin/python -m pytest -q
check_untouched
if [ "${SPANTRACE_SLOW:-0}" = "1" ]; then
  .venv/bin/python -m pytest -q -m slow
  check_untouched
fi
