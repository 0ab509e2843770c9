"""Compare two eval results files row by row (e.g. the same task on a CPU and on a GPU).

    .venv/bin/python scripts/compare_results.py docs/results/cpu/niah_single.jsonl docs/results/niah_single.jsonl

Prints how many (sample, method) pairs both files hold, how many generations are identical, and per
method the largest |Δ| of each metric and of the deletion curve over the shared pairs.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from spantrace.eval.report import load_rows

METRICS = ("rise", "mas", "insertion_auc", "recovery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    first = {(r["sample_id"], r["method"]): r for r in load_rows(args.first) if not r.get("error")}
    second = {(r["sample_id"], r["method"]): r for r in load_rows(args.second) if not r.get("error")}
    shared = sorted(set(first) & set(second))
    same = sum(first[key]["output"] == second[key]["output"] for key in shared)
    print(f"{len(shared)} shared (sample, method) pairs ({len(first)} and {len(second)} rows); "
          f"{same} identical generations")
    gaps: dict[str, list[list[float]]] = defaultdict(list)
    for key in shared:
        a, b = first[key], second[key]
        row = [abs(a[m] - b[m]) if a.get(m) is not None and b.get(m) is not None else 0.0 for m in METRICS]
        row.append(float(np.abs(np.subtract(a["deletion_curve"], b["deletion_curve"])).max()))
        gaps[key[1]].append(row)
    print(f"{'method':22s} " + " ".join(f"{name:>14s}" for name in (*METRICS, "deletion curve")))
    for method, rows in sorted(gaps.items()):
        worst = np.max(rows, axis=0)
        print(f"{method:22s} " + " ".join(f"{value:14.2e}" for value in worst))


if __name__ == "__main__":
    main()
