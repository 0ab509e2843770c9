"""The benchmark script runs end to end in smoke mode, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_trace.py"


def test_bench_trace_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_trace", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "trace.json"
    rows = bench.main(["--smoke", "--out", str(out)])
    assert {(r["job"], r["tokens"]) for r in rows} == {(j, n) for j in bench.JOBS for n in (64, 128)}
    assert all("error" not in r and r["seconds"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows
