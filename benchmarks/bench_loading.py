"""How long the built-in model takes to load: into an empty cache, from the cache in the same process, and from
the cache in a fresh process (imports not counted). The tests check what a load does, not how long it takes.

Every load goes to a temporary cache folder (``SPANTRACE_CACHE_DIR``), never the user's.

    .venv/bin/python benchmarks/bench_loading.py --repeats 3 --out /tmp/loading.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from spantrace.loading import builtin
from spantrace.loading.hub import clear_memo, load_hf

# Run in a fresh interpreter: prints the seconds that load_hf() alone took (the imports come before the clock).
FRESH_PROCESS = textwrap.dedent(
    """
    import time
    import transformers.models.llama.modeling_llama
    from spantrace.loading.hub import load_hf
    start = time.perf_counter()
    load_hf()
    print(time.perf_counter() - start)
    """
)


def seconds_of(function: Callable[[], object]) -> float:
    """The wall-clock seconds ``function()`` took."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(cache: Path, repeats: int) -> dict[str, float]:
    """First, cached and fresh-process load times (the last two: best of ``repeats``) with ``cache`` empty."""
    os.environ[builtin.CACHE_ENV_VAR] = str(cache)
    clear_memo()
    first = seconds_of(load_hf)
    cached = []
    for _ in range(repeats):
        clear_memo()  # the next load reads the cache folder, not this process's memo
        cached.append(seconds_of(load_hf))
    fresh = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, check=True)
        fresh.append(float(done.stdout.split()[-1]))
    return {"first_load_s": first, "cached_load_s": min(cached), "fresh_process_cached_load_s": min(fresh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to take the best of")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spantrace-bench-cache-") as cache:
        result = measure(Path(cache), args.repeats)
    for name, seconds in result.items():
        print(f"{name:28s} {seconds:8.2f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
