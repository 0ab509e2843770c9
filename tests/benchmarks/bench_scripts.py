"""The benchmark scripts are files, not modules of the package: the tests import them from ``benchmarks/``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on ``sys.path`` (as when the script runs), so
    it finds its sibling modules (``bench_trace`` imports ``trace_cases``, ``trace_timing``, ``bench_plots``)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
