"""The benchmark's figures: panels of lines against tokens (log x), drawn and saved by one helper,
``save_figure``; ``trace_figure`` (time and peak memory per job) and ``paired_figure`` (the paired job) use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from trace_timing import peak_gib


class Line(NamedTuple):
    """One plotted line: y against x, its legend label and matplotlib style (``marker``, ``ls``, ``color``…)."""

    x: list[float]
    y: list[float]
    label: str
    style: dict[str, Any] = {"marker": "o"}


class Panel(NamedTuple):
    """One axis of a figure: its title, y label, lines, whether y is logarithmic, and horizontal guide levels."""

    title: str
    ylabel: str
    lines: list[Line]
    log_y: bool = True
    levels: tuple[float, ...] = ()


def save_figure(panels: list[Panel], path: Path, title: str, *, legend_size: float | None = None) -> bool:
    """Draw ``panels`` side by side (x: tokens, log scale, ticked at every length) and save a PNG at ``path``;
    False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + 3, 4.2), constrained_layout=True)
    for axis, panel in zip(axes, panels, strict=True):
        tokens = sorted({x for line in panel.lines for x in line.x})
        values = [y for line in panel.lines for y in line.y]
        for line in panel.lines:
            axis.plot(line.x, line.y, label=line.label, **line.style)
        for level in panel.levels:
            axis.axhline(level, color="black", lw=0.6, alpha=0.5)
        axis.set_xscale("log")
        axis.set_xticks(tokens, [str(n) for n in tokens])
        axis.xaxis.set_minor_formatter(NullFormatter())
        if panel.log_y:
            axis.set_yscale("log")
            low, high = min(values, default=1.0), max(values, default=1.0)
            if 0 < low and high < 10 * low:  # less than a decade: a few plain ticks instead of one or none
                ticks = [low * (high / low) ** (k / 3) for k in range(4)]
                axis.set_yticks(ticks, [f"{tick:.3g}" for tick in ticks])
            else:
                axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.yaxis.set_minor_formatter(NullFormatter())
        else:
            axis.set_ylim(bottom=0)
        axis.set_title(panel.title)
        axis.set_xlabel("tokens")
        axis.set_ylabel(panel.ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=legend_size)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def trace_figure(rows: list[dict], path: Path, title: str) -> bool:
    """Time and peak memory against tokens, log–log, one line per job; False when matplotlib is missing."""
    times, memories = [], []
    for job in dict.fromkeys(row["job"] for row in rows):
        done = sorted((row for row in rows if row["job"] == job and "error" not in row), key=lambda r: r["tokens"])
        if done:
            tokens = [row["tokens"] for row in done]
            times.append(Line(tokens, [row["seconds"] for row in done], job))
            memories.append(Line(tokens, [peak_gib(row) for row in done], job))
    gpu = any("peak_gpu_gib" in row for row in rows)
    memory = "peak GPU memory, GiB" if gpu else "peak RSS, GiB"
    return save_figure([Panel("time", "seconds", times), Panel("peak memory", memory, memories)], path, title)


def paired_figure(rows: list[dict], path: Path, title: str) -> bool:
    """The paired job: seconds (forward, trace alone, end to end, the arithmetic limit), time over one forward
    pass, and peak memory, against tokens; False when matplotlib is missing."""
    done = sorted((row for row in rows if row["job"] == "paired" and "error" not in row), key=lambda r: r["tokens"])
    tokens = [row["tokens"] for row in done]
    times = [
        Line(tokens, [row[key] for row in done], label)
        for key, label in (
            ("forward_seconds", "forward pass"),
            ("trace_seconds", "trace alone (hop 0 + hop 1)"),
            ("end_to_end_seconds", "end to end (capture + trace)"),
        )
    ]
    ratios = [
        Line(tokens, [row["trace/forward"] for row in done], "trace alone / forward"),
        Line(tokens, [row["end_to_end/forward"] for row in done], "end to end / forward"),
    ]
    if all(row.get("limit") is not None for row in done):  # the ratio if the trace ran at the forward pass's rate
        dotted = {"ls": ":", "color": "gray"}
        times.append(Line(tokens, [row["limit"] * row["forward_seconds"] for row in done],
                          "trace at the forward pass's rate (arithmetic)", dotted))
        ratios.append(Line(tokens, [row["limit"] for row in done], "arithmetic limit", dotted))
    panels = [
        Panel("time", "seconds", times),
        Panel("over one forward pass (same process)", "× one forward pass", ratios, log_y=False, levels=(1.0, 2.0)),
        Panel("peak memory", "peak RSS, GiB", [Line(tokens, [peak_gib(row) for row in done], "capture + trace")],
              log_y=False),
    ]
    return save_figure(panels, path, title, legend_size=8)
