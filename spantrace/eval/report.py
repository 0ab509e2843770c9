"""The results report: mean ± standard error per task and method, the best method, and paired sign tests.

Rows come from the runner's JSONL file (lines that are not rows are skipped, with a warning that counts
them). Rows with an ``error`` are counted but left out of the means.
The standard error is ``std(ddof=1) / √n`` (0 for one row). The paired comparison of FlashTrace with
each baseline uses the samples both have, on RISE (lower is better): ``wins`` = samples where
FlashTrace is lower, ``losses`` where it is higher (ties dropped), and the exact two-sided sign-test
p-value ``min(1, 2 · P[Binomial(wins + losses, ½) ≤ min(wins, losses)])``.

Every method of a task is scored on the same samples: a sample that lacks a row for some method of its
task (a run stopped part-way through it) is left out of that task's tables and counted in the preamble.
Each table also says which device its rows ran on, since trace times are only comparable on one.

Source-level columns (``spantrace.eval.sources``) appear for the tasks that have them, with the
``random`` baseline row (a seeded random order of the sources; it has no token-level measures and no
trace time, and takes no part in the sign tests, which need RISE).
"""

from __future__ import annotations

import base64
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpanTraceError
from .results import read_results

COLUMNS = (  # (row key, header, higher is better)
    ("rise", "RISE ↓", False),
    ("mas", "MAS ↓", False),
    ("insertion_auc", "Insertion AUC ↑", True),
    ("recovery", "Recovery@10% ↑", True),
    ("sentence_recovery_at_gold", "Sentence R@gold ↑", True),
    ("sentence_recovery_at_5", "Sentence R@5 ↑", True),
    ("ablation_drop_1", "Ablation drop@1 ↑", True),
    ("ablation_drop_3", "Ablation drop@3 ↑", True),
    ("ablation_auc", "Ablation AUC ↑", True),
    ("top_document_correct", "Top document ↑", True),
    ("correct", "Answer correct ↑", True),
    ("trace_s", "Trace time (s) ↓", False),
)
REFERENCE_METHOD = "flashtrace"


def load_rows(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a results file (``results.read_results``): a torn last line is ignored, other lines that are
    not rows are skipped with one warning that counts them; a file with no row is an error (one line)."""
    loaded = read_results(path)
    rows = [row for row in loaded.rows if _numeric(row)]
    skipped = len(loaded.skipped) + len(loaded.rows) - len(rows)
    if skipped:
        first = (f"the first, line {loaded.skipped[0][0]}, is {loaded.skipped[0][1]}" if loaded.skipped
                 else "a metric that is not a number")
        warnings.warn(f"{path}: skipped {skipped} line(s) that are not spantrace rows ({first})", stacklevel=2)
    if not rows:
        raise SpanTraceError(f"{path} has no usable row (every row has a metric that is not a number)")
    return rows


def _numeric(row: dict[str, Any]) -> bool:
    """Whether every metric the report reads is a number (or absent, or null) in ``row``."""
    return all(row.get(key) is None or isinstance(row[key], (int, float)) for key, _, _ in COLUMNS)


def complete_samples(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows of samples that have a row (an error row too) for every method of their task, and how many
    rows were left out because their sample is not complete yet."""
    methods: dict[str, set[str]] = defaultdict(set)
    per_sample: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        methods[row["task"]].add(row["method"])
        per_sample[(row["task"], row["sample_id"])].add(row["method"])
    kept = [row for row in rows if per_sample[(row["task"], row["sample_id"])] >= methods[row["task"]]]
    return kept, len(rows) - len(kept)


def row_device(row: dict[str, Any]) -> str:
    """Where a row was measured: its ``device``, else what its memory measure implies (older rows)."""
    if row.get("device"):
        return str(row["device"])
    return {"cuda_allocated": "cuda", "process_peak_rss": "cpu"}.get(str(row.get("memory_kind")), "unknown")


def devices(rows: list[dict[str, Any]]) -> str:
    """``"cuda"``, or ``"cuda (280 rows), cpu (20 rows)"`` when the rows ran on more than one device."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.get("method") == "random" and row_device(row) == "unknown":
            continue  # a baseline row written without its device (it has no trace time to compare)
        counts[row_device(row)] += 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{device} ({count} rows)" for device, count in sorted(counts.items(), key=lambda kv: -kv[1]))


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


@dataclass(frozen=True)
class TaskTable:
    """One task's part of the report: cells as text, the best of each column marked, and the sign tests."""

    task: str
    devices: str  # where its rows ran: trace times compare only within one device
    headers: list[str]
    rows: list[tuple[str, int, list[tuple[str, bool]]]]  # (method, n, [(cell, is best)])
    paired: list[tuple[str, int, int, float]]  # (baseline, wins, losses, p)


def report_tables(rows: list[dict[str, Any]]) -> list[TaskTable]:
    """The report's tables, one per task: mean ± s.e. per method and metric, best marked, then sign tests."""
    if not rows:
        raise SpanTraceError("the results file has no rows")
    rows, _ = complete_samples(rows)
    tables = []
    for task, methods in summarize(rows).items():
        present = [column for column in COLUMNS if any(column[0] in stats for stats in methods.values())]
        best = {}
        for key, _, higher in present:
            means = {m: stats[key][0] for m, stats in methods.items() if key in stats}
            top = (max if higher else min)(means.values())
            winners = [m for m, mean in means.items() if mean == top]
            best[key] = winners[0] if len(winners) == 1 else None  # a tie (e.g. the same answers) marks nothing
        body = []
        for method, stats in methods.items():
            count = max(entry[2] for entry in stats.values())
            cells = [
                (f"{stats[key][0]:.3f} ± {stats[key][1]:.3f}", best[key] == method) if key in stats else ("–", False)
                for key, _, _ in present
            ]
            body.append((method, count, cells))
        baselines = [m for m, stats in methods.items() if m != REFERENCE_METHOD and "rise" in stats]
        if "rise" not in methods.get(REFERENCE_METHOD, {}):
            baselines = []
        paired_rows = [(baseline, *paired(rows, task, baseline)) for baseline in baselines]
        here = devices([row for row in rows if row["task"] == task])
        tables.append(TaskTable(task, here, [header for _, header, _ in present], body, paired_rows))
    return tables


@dataclass(frozen=True)
class Overview:
    """One metric across tasks: a row per method, a column per task, the best of each column marked."""

    metric: str
    tasks: list[tuple[str, int]]  # (task, samples)
    rows: list[tuple[str, list[tuple[str, bool]]]]  # (method, [(cell, is best)])


def overview(tables: list[TaskTable], metric: str = "rise") -> Overview:
    """``metric`` (mean ± s.e.) for every method and task, read off the task tables (``report_tables``)."""
    header = next(header for key, header, _ in COLUMNS if key == metric)
    tasks, columns = [], {}
    for table in tables:
        if header not in table.headers:
            continue
        index = table.headers.index(header)
        tasks.append((table.task, max(count for _, count, _ in table.rows)))
        columns[table.task] = {method: cells[index] for method, _, cells in table.rows}
    methods = sorted({method for column in columns.values() for method in column})
    body = [(method, [columns[task].get(method, ("–", False)) for task, _ in tasks]) for method in methods]
    return Overview(header, tasks, body)


def _preamble(rows: list[dict[str, Any]]) -> tuple[str, int, int]:
    models = sorted({str(row.get("model")) for row in rows})
    kept, partial = complete_samples(rows)
    return ", ".join(models), sum(1 for row in kept if row.get("error")), partial


def markdown_report(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables: per task, mean ± s.e. per method (best in bold), then FlashTrace's sign tests."""
    tables = report_tables(rows)
    models, errors, partial = _preamble(rows)
    lines = [f"# Faithfulness results ({models})", ""]
    if errors:
        lines += [f"{errors} row(s) with an error are left out.", ""]
    if partial:
        lines += [f"{partial} row(s) of samples not yet scored by every method are left out.", ""]
    if len(tables) > 1:
        summary = overview(tables)
        lines += [f"## {summary.metric} by task", ""]
        lines.append("| method | " + " | ".join(f"{task} (n={n})" for task, n in summary.tasks) + " |")
        lines.append("|---|" + "---:|" * len(summary.tasks))
        for method, cells in summary.rows:
            lines.append(f"| {method} | " + " | ".join(f"**{c}**" if best else c for c, best in cells) + " |")
        lines.append("")
    for table in tables:
        lines += [f"## {table.task}", "", f"Measured on: {table.devices}.", ""]
        lines += ["| method | n | " + " | ".join(table.headers) + " |"]
        lines.append("|---|---:|" + "---:|" * len(table.headers))
        for method, count, cells in table.rows:
            shown = [f"**{cell}**" if is_best else cell for cell, is_best in cells]
            lines.append(f"| {method} | {count} | " + " | ".join(shown) + " |")
        if table.paired:
            lines += ["", "| FlashTrace vs | wins | losses | sign-test p (RISE) |", "|---|---:|---:|---:|"]
            lines += [f"| {baseline} | {wins} | {losses} | {p:.3g} |" for baseline, wins, losses, p in table.paired]
        lines.append("")
    return "\n".join(lines)


def html_report(rows: list[dict[str, Any]], figures: dict[str, bytes] | None = None) -> str:
    """The same tables as one self-contained HTML page; ``figures`` (title → PNG bytes) are embedded inline."""
    from ..render.html import environment

    models, errors, partial = _preamble(rows)
    images = [(title, base64.b64encode(png).decode("ascii")) for title, png in (figures or {}).items()]
    tables = report_tables(rows)
    return environment().get_template("eval_report.html.j2").render(
        models=models, errors=errors, partial=partial, tables=tables, figures=images, rows=len(rows),
        overview=overview(tables) if len(tables) > 1 else None,
        reference=REFERENCE_METHOD,
    )
