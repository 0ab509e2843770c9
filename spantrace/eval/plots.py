"""The report's figures (matplotlib, no display needed): metric bars per task, and metric vs reasoning length.

``metric_bars``: one panel per metric, a group of bars per task, one bar per method, the standard error
as whiskers. ``metric_vs_length``: each method's mean of a metric in bins of the generation's length in
tokens (the "reasoning length" the trace runs through), one line per method. Both return PNG bytes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import InputError
from .report import COLUMNS, summarize

PLOTTED = ("rise", "mas", "insertion_auc", "recovery", "sentence_recovery_at_gold", "ablation_auc",
           "top_document_correct")  # panels only for the metrics the rows have
HEADERS = {key: header for key, header, _ in COLUMNS}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise InputError("plots need matplotlib: pip install 'spantrace[plots]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({row["method"] for row in rows if not row.get("error")})


def metric_bars(rows: list[dict[str, Any]], metrics: tuple[str, ...] = PLOTTED) -> bytes:
    """Bars of each metric's mean ± standard error per task and method (PNG)."""
    plt = _pyplot()
    table = summarize(rows)
    tasks, methods = list(table), _methods(rows)
    metrics = tuple(m for m in metrics if any(m in stats for per in table.values() for stats in per.values()))
    if not tasks or not metrics:
        raise InputError("nothing to plot: the results have no metric values")
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1.6, 3.6), squeeze=False)
    width = 0.8 / len(methods)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for index, method in enumerate(methods):
            means, errors = [], []
            for task in tasks:
                mean, error, _ = table[task].get(method, {}).get(metric, (np.nan, 0.0, 0))
                means.append(mean)
                errors.append(error)
            x = np.arange(len(tasks)) + (index - (len(methods) - 1) / 2) * width
            axis.bar(x, means, width, yerr=errors, color=colours(index), label=method, capsize=1.5,
                     error_kw={"elinewidth": 0.8})
        axis.set_title(HEADERS[metric], fontsize=10)
        axis.set_xticks(np.arange(len(tasks)), tasks, fontsize=8, rotation=20 if len(tasks) > 2 else 0)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return _png(figure)


def metric_vs_length(rows: list[dict[str, Any]], metric: str = "rise", bins: int = 4) -> bytes:
    """Each method's mean ``metric`` against the generation's length in tokens, in quantile bins (PNG)."""
    plt = _pyplot()
    usable = [r for r in rows if not r.get("error") and r.get(metric) is not None and r.get("target_tokens")]
    if not usable:
        raise InputError(f"nothing to plot: no row has both {metric} and target_tokens")
    lengths = np.array([r["target_tokens"] for r in usable], dtype=np.float64)
    edges = np.unique(np.quantile(lengths, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        edges = np.array([lengths.min(), lengths.min() + 1.0])
    methods = _methods(usable)
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for index, method in enumerate(methods):
        mine = [r for r in usable if r["method"] == method]
        length = np.array([r["target_tokens"] for r in mine], dtype=np.float64)
        value = np.array([r[metric] for r in mine], dtype=np.float64)
        which = np.clip(np.searchsorted(edges, length, side="right") - 1, 0, edges.size - 2)
        centres, means = [], []
        for b in range(edges.size - 1):
            if (which == b).any():
                centres.append(length[which == b].mean())
                means.append(value[which == b].mean())
        axis.plot(centres, means, marker="o", markersize=3.5, linewidth=1.3, color=colours(index), label=method)
    axis.set_xlabel("generated tokens (reasoning + answer)", fontsize=9)
    axis.set_ylabel(HEADERS[metric], fontsize=9)
    axis.set_title(f"{HEADERS[metric]} vs reasoning length ({len(edges) - 1} length bins)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return _png(figure)
