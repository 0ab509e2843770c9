"""The results report: mean ± standard error per task and method, the best method, and paired sign tests.

Rows come from the runner's JSONL file. Rows with an ``error`` are counted but left out of the means.
The standard error is ``std(ddof=1) / √n`` (0 for one row). The paired comparison of FlashTrace with
each baseline uses the samples both have, on RISE (lower is better): ``wins`` = samples where
FlashTrace is lower, ``losses`` where it is higher (ties dropped), and the exact two-sided sign-test
p-value ``min(1, 2 · P[Binomial(wins + losses, ½) ≤ min(wins, losses)])``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import SpanTraceError

COLUMNS = (  # (row key, header, higher is better)
    ("rise", "RISE ↓", False),
    ("mas", "MAS ↓", False),
    ("insertion_auc", "Insertion AUC ↑", True),
    ("recovery", "Recovery@10% ↑", True),
    ("correct", "Answer correct ↑", True),
    ("trace_s", "Trace time (s) ↓", False),
)
REFERENCE_METHOD = "flashtrace"


def load_rows(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a results file (a torn last line is ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SpanTraceError(f"could not read {path}: {error.strerror}") from error
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise SpanTraceError(f"{path} line {number} is not JSON ({error})") from error
    return rows


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error ``std(ddof=1) / √n`` (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((value - mean) ** 2 for value in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value for ``wins`` against ``losses`` (ties already dropped)."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1)) / 2**trials
    return min(1.0, 2 * tail)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, tuple[float, float, int]]]]:
    """``{task: {method: {metric: (mean, standard error, n)}}}`` over rows without an error."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("error"):
            continue
        for key, _, _ in COLUMNS:
            if row.get(key) is not None:
                groups[(row["task"], row["method"])][key].append(float(row[key]))
    table: dict[str, dict[str, dict[str, tuple[float, float, int]]]] = defaultdict(dict)
    for (task, method), values in sorted(groups.items()):
        table[task][method] = {key: (*mean_and_error(v), len(v)) for key, v in values.items()}
    return dict(table)


def paired(rows: list[dict[str, Any]], task: str, baseline: str, metric: str = "rise") -> tuple[int, int, float]:
    """(wins, losses, p) of FlashTrace against ``baseline`` on ``metric`` (lower is better) in ``task``."""
    by_method: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row.get("task") == task and not row.get("error") and row.get(metric) is not None:
            by_method[row["method"]][row["sample_id"]] = float(row[metric])
    ours, theirs = by_method.get(REFERENCE_METHOD, {}), by_method.get(baseline, {})
    shared = sorted(set(ours) & set(theirs))
    wins = sum(ours[s] < theirs[s] for s in shared)
    losses = sum(ours[s] > theirs[s] for s in shared)
    return wins, losses, sign_test(wins, losses)


def markdown_report(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables: per task, mean ± s.e. per method (best in bold), then FlashTrace's sign tests."""
    if not rows:
        raise SpanTraceError("the results file has no rows")
    table = summarize(rows)
    models = sorted({str(row.get("model")) for row in rows})
    errors = sum(1 for row in rows if row.get("error"))
    lines = [f"# Faithfulness results ({', '.join(models)})", ""]
    if errors:
        lines += [f"{errors} row(s) with an error are left out.", ""]
    for task, methods in table.items():
        present = [column for column in COLUMNS if any(column[0] in stats for stats in methods.values())]
        best = {}
        for key, _, higher in present:
            means = {m: stats[key][0] for m, stats in methods.items() if key in stats}
            best[key] = (max if higher else min)(means, key=means.get)
        lines += [f"## {task}", "", "| method | n | " + " | ".join(h for _, h, _ in present) + " |"]
        lines.append("|---|---:|" + "---:|" * len(present))
        for method, stats in methods.items():
            count = max(entry[2] for entry in stats.values())
            cells = []
            for key, _, _ in present:
                if key not in stats:
                    cells.append("–")
                    continue
                mean, error, _ = stats[key]
                cell = f"{mean:.3f} ± {error:.3f}"
                cells.append(f"**{cell}**" if best[key] == method else cell)
            lines.append(f"| {method} | {count} | " + " | ".join(cells) + " |")
        baselines = [m for m in methods if m != REFERENCE_METHOD]
        if REFERENCE_METHOD in methods and baselines:
            lines += ["", "| FlashTrace vs | wins | losses | sign-test p (RISE) |", "|---|---:|---:|---:|"]
            for baseline in baselines:
                wins, losses, p = paired(rows, task, baseline)
                lines.append(f"| {baseline} | {wins} | {losses} | {p:.3g} |")
        lines.append("")
    return "\n".join(lines)
