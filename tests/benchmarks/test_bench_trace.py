"""The benchmark script runs end to end in smoke mode, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_trace")


@pytest.fixture(scope="module")
def cases() -> ModuleType:
    return load_script("trace_cases")


@pytest.fixture(scope="module")
def timing() -> ModuleType:
    return load_script("trace_timing")


def test_bench_trace_smoke(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    rows = bench.main(["--smoke", "--out", str(out)])
    assert {(r["job"], r["tokens"]) for r in rows} == {(j, n) for j in bench.JOBS for n in (64, 128)}
    assert all("error" not in r and r["seconds"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows
    assert {entry["tokens"] for entry in saved["ratios"]} == {64, 128}
    assert all("ifr/flashtrace_seconds" in entry for entry in saved["ratios"])
    png = out.with_suffix(".png")
    assert png.is_file() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("shape", "model_type", "vocab"), [("llama3-8b", "llama", 128256), ("qwen3-8b", "qwen3", 151936)]
)
def test_scaled_down_shapes_trace(cases: ModuleType, shape: str, model_type: str, vocab: int) -> None:
    """The 8B shapes, cut to 2 layers and hidden 256, build on the meta device, materialise and trace on the CPU."""
    model = cases.shaped_model(shape, device="cpu", layers=2, hidden=256)
    config = model.hf_model.config
    assert (config.model_type, config.vocab_size, config.num_hidden_layers, config.hidden_size) == (
        model_type,
        vocab,
        2,
        256,
    )
    assert config.head_dim == 128 and config.num_attention_heads // config.num_key_value_heads in (2, 4)
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16
    assert not any(p.is_meta for p in model.hf_model.parameters())
    if model_type == "qwen3":
        assert hasattr(model.hf_model.model.layers[0].self_attn, "q_norm")
    rotary = model.hf_model.model.rotary_emb
    theta = cases.SHAPES[shape]["rope_theta"]
    expected = 1.0 / theta ** (torch.arange(0, 128, 2, dtype=torch.float) / 128)
    torch.testing.assert_close(rotary.inv_freq, expected)

    ids = cases.token_ids(model, 32)
    result = model.run(input_ids=ids, prompt_length=24, progress=False).trace((28, 32), method="flashtrace")
    assert result.scores.shape == (32,)
    assert np.isfinite(result.scores).all() and np.abs(result.scores).sum() > 0


def test_baselines_budget_and_sampled_ifr_rows(
    bench: ModuleType, cases: ModuleType, timing: ModuleType, tmp_path: Path
) -> None:
    """Any registered method is a job; --ifr-rows times the last rows of a long span and scales hop 0 up."""
    setup = cases.Setup(source="tiny")
    whole = cases.Workload(prompt_share=0.25, span_tokens=64, hops=0)
    sampled = whole._replace(ifr_rows=16)
    full = timing.measure("ifr", 96, setup, whole)
    part = timing.measure("ifr", 96, setup, sampled)
    assert full["span"] == part["span"] == [32, 96] and full["hops"] == 0
    assert (part["timed_rows"], part["span_rows"], part["extrapolated"]) == (16, 64, True)
    assert part["measured_seconds"] < part["seconds"] and len(part["hop_seconds"]) == 1
    rows = bench.main(["--model", "tiny", "--lengths", "64", "--jobs", "forward", "rollout", "occlusion",
                       "--out", str(tmp_path / "b.json"), "--budget", "600"])
    assert [row["job"] for row in rows] == ["forward", "rollout", "occlusion"]
    assert all("error" not in row and row["seconds"] > 0 for row in rows)
    over = bench.run_all([64], ["flashtrace"], setup, whole, budget=0.01)
    assert over == [{"job": "flashtrace", "tokens": 64, "error": "over the 0.01 s budget", "over_budget": True}]
    with pytest.raises(SystemExit):
        bench.main(["--ifr-rows", "8", "--hops", "1", "--smoke", "--out", str(tmp_path / "c.json")])


def test_paired_job_times_forward_and_trace_in_one_process(
    bench: ModuleType, cases: ModuleType, timing: ModuleType, tmp_path: Path
) -> None:
    """The long-reasoning case: the answer traced back through the whole generation, beside one forward pass."""
    workload = cases.Workload(prompt_share=0.125, span_tokens=8, hops=1, repeats=1)
    row = timing.measure("paired", 64, cases.Setup(source="tiny"), workload)
    assert row["span"] == [56, 64] and row["prompt_tokens"] == 8
    assert len(row["hop_seconds"]) == 2 and row["trace_seconds"] > 0 and row["forward_seconds"] > 0
    assert row["end_to_end_seconds"] == row["capture_seconds"] + row["trace_seconds"]
    assert row["trace/forward"] == row["trace_seconds"] / row["forward_seconds"]
    assert 0 < row["limit"] < 1 and row["trace_exponentials"] > 0
    rows = bench.main(["--model", "tiny", "--lengths", "64", "--jobs", "paired", "--repeats", "1",
                       "--prompt-share", "0.125", "--out", str(tmp_path / "p.json")])
    assert [row["job"] for row in rows] == ["paired"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arithmetic_counts_the_causal_pairs(timing: ModuleType) -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=4, intermediate_size=16, vocab_size=10)
    counts = timing.arithmetic(config, length=4, prompt_length=1, span=(3, 4), hops=1)
    # forward: 4 tokens × (q 64 + k, v 64 + o 64 + MLP 384) + 2 · 10 pairs · 2 heads · 4 + LM head 4 · 8 · 10
    assert counts["forward_macs"] == 4 * (64 + 64 + 64 + 384) + 2 * 10 * 2 * 4 + 320
    assert counts["forward_exponentials"] == 2 * 10
    # hop 0: sink 3 sees 4 sources; hop 1: sinks 1, 2, 3 see 2 + 3 + 4
    assert counts["trace_exponentials"] == 2 * (4 + 9)
