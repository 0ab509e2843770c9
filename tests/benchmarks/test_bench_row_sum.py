"""The row-sum benchmark runs (at small sizes), so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_script


def test_bench_row_sum_small(tmp_path: Path) -> None:
    bench = load_script("bench_row_sum")
    out = tmp_path / "rows.json"
    rows = bench.main(["--lengths", "64", "200", "--repeats", "1", "--out", str(out)])
    assert [row["tokens"] for row in rows] == [64, 200]
    assert all(row["blocked_s"] > 0 and row["fused_s"] > 0 for row in rows)
    assert json.loads(out.read_text())["rows"] == rows
