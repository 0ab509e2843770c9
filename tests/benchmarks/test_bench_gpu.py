"""The GPU benchmark and the memory table run, so they cannot rot: ``--smoke`` on the CPU, plain and dispatched."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_gpu")


@pytest.mark.parametrize("dispatch", [False, True])
def test_bench_gpu_smoke(bench: ModuleType, tmp_path: Path, dispatch: bool) -> None:
    out = tmp_path / "gpu.json"
    rows = bench.main(["--smoke", "--out", str(out)] + (["--dispatch"] if dispatch else []))
    assert [row["tokens"] for row in rows] == list(bench.SMOKE_LENGTHS)
    for row in rows:
        assert "error" not in row, row
        assert all(row[key] > 0 for key in ("forward_s", "capture_s", "trace_s", "end_to_end_s"))
        assert row["end_to_end_s"] == pytest.approx(row["capture_s"] + row["trace_s"])
        assert row["span"] == [row["tokens"] - 32, row["tokens"]]
        assert row["peak_gib"]["rss"] > 0 and row["planned_gib"]["cpu"] > 0
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["meta"]["dispatch"] == dispatch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bench_gpu_without_cuda_stops_with_one_line(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--out", str(tmp_path / "gpu.json")])
    assert "needs a CUDA device" in str(stopped.value) and "--smoke" in str(stopped.value)
    assert not (tmp_path / "gpu.json").exists()


def test_memory_table_is_the_planner_arithmetic() -> None:
    table = load_script("memory_table")
    rows = {(row["model"], row["tokens"]): row for row in table.rows([8192], "bfloat16", 128)}
    qwen = rows["Qwen3-8B", 8192]
    assert qwen["capture"] * 2**30 == 36 * 2 * 8192 * 4096 * 2 + 8 * 8192  # x_in and x_mid in bf16, the ids
    assert qwen["cache"] * 2**30 == 36 * 8192 * 8 * (128 + 128) * 2  # GQA keys and values
    deepseek = rows["DeepSeek-V3", 8192]
    assert deepseek["cache"] * 2**30 == 61 * 8192 * 128 * (192 + 128) * 2  # MLA: every head's own key and value
    assert "| Llama-3.3-70B | 128k | 320.0 |" in table.main([])
