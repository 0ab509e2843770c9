"""``spantrace report``: eval results as tables (mean ± s.e., sign tests), and figures as PNG or HTML."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import SpanTraceError
from .common import fail, one_line


def report(
    results: Annotated[
        list[Path], typer.Argument(metavar="RESULTS...", exists=True, dir_okay=False, help="JSONL files from eval.")
    ],
    markdown: Annotated[Path | None, typer.Option(dir_okay=False, metavar="PATH", help="Also write it here.")] = None,
    html: Annotated[
        Path | None, typer.Option(dir_okay=False, metavar="PATH", help="Write a self-contained HTML report.")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(file_okay=False, metavar="DIR", help="Write the figures here as PNG files.")
    ] = None,
) -> None:
    """Summarise eval results: mean ± s.e. per task and method, FlashTrace's paired sign tests, and figures."""
    from ..eval.report import html_report, load_rows, markdown_report

    for path, option in ((markdown, "--markdown"), (html, "--html")):
        if path is not None:
            _check_writable(path.parent, f"{option} {path}")
    if plots is not None:
        existing = next((folder for folder in (plots, *plots.parents) if folder.exists()), Path("."))
        _check_writable(existing, f"--plots {plots}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = [row for path in results for row in load_rows(path)]
        for warning in caught:
            typer.echo(f"Warning: {one_line(str(warning.message))}", err=True)
        text = markdown_report(rows)
        figures = _report_figures(rows) if html is not None or plots is not None else {}
    except SpanTraceError as error:
        fail(str(error))
    typer.echo(text)
    try:
        if markdown is not None:
            markdown.write_text(text + "\n", encoding="utf-8")
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for name, png in figures.items():
                (plots / f"{name}.png").write_bytes(png)
        if html is not None:
            titles = {"metrics": "Each metric per task and method (mean ± s.e.)",
                      "rise_vs_length": "RISE against the length of the generation, in length bins"}
            page = html_report(rows, {titles[name]: png for name, png in figures.items()})
            html.write_text(page, encoding="utf-8")
    except OSError as error:
        fail(f"could not write {error.filename} ({error.strerror}); choose a writable path")


def _check_writable(folder: Path, what: str) -> None:
    """Fail (one line) before any work when ``folder`` is missing or cannot be written."""
    if not folder.is_dir():
        fail(f"cannot write {what}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"cannot write {what}: the folder {folder} is not writable; choose another path")


def _report_figures(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    from ..eval.plots import metric_bars, metric_vs_length
    from ..eval.report import complete_samples

    rows, _ = complete_samples(rows)  # the figures show the samples the tables show
    figures = {"metrics": metric_bars(rows)}
    if any(row.get("rise") is not None for row in rows):  # source-only runs have no RISE
        figures["rise_vs_length"] = metric_vs_length(rows)
    return figures
