"""One layer's weighted row sum ᾱ, blocked (its own softmax) against fused (one reversed flash-attention call).

Random queries, keys and log-sum-exps of the built-in model's attention shape (9 query heads, 3 KV heads,
d = 64); the sinks are the last 7/8 of the sequence, as in the long-reasoning case; best of ``--repeats``.

    .venv/bin/python benchmarks/bench_row_sum.py --lengths 4000 8000 --out benchmarks/results/row_sum.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spantrace.contract import AttentionRule
from spantrace.kernels.rows import fused_row_sum, weighted_row_sum


def best_of(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def measure(length: int, repeats: int, heads: int = 9, groups: int = 3, head_dim: int = 64) -> dict:
    generator = torch.Generator().manual_seed(length)
    rule = AttentionRule(heads, groups, head_dim, head_dim**-0.5, None, None)
    first = length // 8
    sinks = torch.arange(first, length)
    keys = torch.randn(groups, length, head_dim, generator=generator)
    queries = torch.randn(heads, len(sinks), head_dim, generator=generator)
    weights = torch.rand(len(sinks), generator=generator) + 1e-3
    logsumexp = 5 * torch.rand(heads, length, generator=generator)
    blocked = best_of(lambda: weighted_row_sum(queries, keys, sinks, weights, rule, length), repeats)
    fused = best_of(lambda: fused_row_sum(queries, keys, sinks, weights, logsumexp, rule, length), repeats)
    row = {"tokens": length, "sinks": len(sinks), "blocked_s": blocked, "fused_s": fused}
    row.update({"fused/blocked": fused / blocked, "threads": torch.get_num_threads()})
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'tokens':>7} {'sinks':>6} {'blocked':>9} {'fused':>9} {'fused/blocked':>14}")
    for length in args.lengths:
        row = measure(length, args.repeats)
        rows.append(row)
        timings = f"{row['blocked_s']:>8.3f}s {row['fused_s']:>8.3f}s {row['fused/blocked']:>14.2f}"
        print(f"{length:>7} {row['sinks']:>6} {timings}")
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows}, indent=2))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
