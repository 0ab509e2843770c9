"""The terminal view of a ``TraceResult`` (Rich): prompt heatmap, traced span, top-k table, ρ, timings.

Colours show the final score of each prompt token; the top-k tokens also carry their rank as a
superscript and the traced span sits between ⟦ ⟧, so the view still reads without colour (pipes, logs).
Each image of the context is a small grid of blocks, one per image token (shaded ░▒▓█ by score as well).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rich.color import Color
from rich.console import Console
from rich.panel import Panel
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..text.tokens import is_special
from .heat import heat_rgb, intensities, is_dark, quoted, shown_in_text
from .picture import ImageView, image_views
from .view import TracedScores

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_BAR_WIDTH = 20
_SHADES = " ░▒▓█"  # an image cell's intensity, readable without colour
_GRID_COLUMNS = 32  # wider image grids are pooled into blocks of cells to fit
_TIMING_NAMES = {"load_s": "load", "generate_s": "generate", "capture_s": "capture", "trace_s": "trace"}


def render_terminal(
    result: TracedScores,
    *,
    top_k: int = 10,
    console: Console | None = None,
    extra_timings: Mapping[str, float] | None = None,
    by: str | None = None,
    include_template: bool = False,
) -> None:
    """Print ``result`` to ``console`` (stdout by default); ``extra_timings`` (e.g. ``load_s``) go first.

    ``by`` adds the top-k sources of that grouping (``TracedScores.by``). Template and special tokens are
    dimmed and left out of the colour scale and the tables unless ``include_template``."""
    console = console or Console()
    console.print(_header(result))
    title = "prompt · colour = score" + ("" if include_template else " · template dimmed")
    console.print(Panel(_prompt_heatmap(result, top_k, include_template), title=title, title_align="left"))
    console.print(Panel(_generation(result), title="generation · ⟦traced span⟧", title_align="left"))
    for image in image_views(result):
        title = f"{image.name} · {image.rows}×{image.cols} tokens · {image.share:.1%} of the context"
        console.print(Panel(_image_grid(image), title=title, title_align="left", expand=False))
    console.print(_top_table(result, top_k, include_template))
    if by is not None:
        console.print(_source_table(result, by, top_k, include_template))
    console.print(_template_line(result, include_template))
    console.print(_rho_line(result))
    console.print(_timings_line({**(extra_timings or {}), **result.timings}))


def _header(result: TracedScores) -> Text:
    start, end = result.span
    info = result.info
    options = info.get("options", {})
    header = Text()
    header.append("spantrace · ", style="bold")
    header.append(result.method, style="bold cyan")
    header.append(f" · {info.get('model', '?')}\n")
    header.append(
        f"span: tokens {start}…{end - 1} ({end - start} of {result.num_tokens - result.prompt_length} generated)"
    )
    header.append(f" · hops: {result.hops}")
    if result.hops:
        header.append(f" (recursive: {options.get('recursive', '?')})")
    if info.get("self_check") == "skipped":  # loaded with check=False: the adapter was not verified on this model
        header.append("\nself-check: skipped (check=False): these scores were not verified against the model", "yellow")
    return header


def _prompt_heatmap(result: TracedScores, top_k: int, include_template: bool) -> Text:
    prompt_length = result.prompt_length
    greyed = np.zeros(prompt_length, dtype=bool) if include_template else result.template_mask[:prompt_length]
    heat = intensities(np.where(greyed, 0.0, result.scores[:prompt_length]))
    ranks = {entry.position: rank for rank, entry in enumerate(result.top(top_k, include_template=include_template), 1)}
    text = Text()
    for position in range(prompt_length):
        token = result.tokens[position]
        rgb = heat_rgb(float(heat[position]))
        if greyed[position]:
            style = Style(dim=True, color="grey50")
        elif rgb is not None:
            style = Style(bgcolor=Color.from_rgb(*rgb), color="white" if is_dark(float(heat[position])) else "black")
        else:
            style = Style(dim=is_special(token))
        shown = shown_in_text(token)
        body = shown.rstrip("\n")  # a rank mark goes before a token's line break
        text.append(body, style=style)
        if position in ranks:
            text.append(str(ranks[position]).translate(_SUPERSCRIPT), style="bold magenta")
        text.append(shown[len(body) :])
    text.rstrip()
    return text


def _generation(result: TracedScores) -> Text:
    start, end = result.span
    text = Text()
    for position in range(result.prompt_length, result.num_tokens):
        if position == start:
            text.append("⟦", style="bold cyan")
        style = "bold underline cyan" if start <= position < end else "dim"
        text.append(shown_in_text(result.tokens[position]), style=style)
        if position == end - 1:
            text.append("⟧", style="bold cyan")
    return text


def _top_table(result: TracedScores, top_k: int, include_template: bool) -> Table:
    considered = result.prompt_scores if include_template else result.prompt_scores[~result.template_mask[
        : result.prompt_length]]
    total = float(considered.clip(min=0).sum())
    top = result.top(top_k, include_template=include_template)
    best = top[0].score if top and top[0].score > 0 else 1.0
    table = Table(title=f"top {len(top)} prompt tokens", title_justify="left", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("score", justify="right")
    table.add_column("share", justify="right")
    table.add_column("", no_wrap=True)
    for rank, entry in enumerate(top, start=1):
        share = entry.score / total if total > 0 else 0.0
        bar = "█" * max(0, round(_BAR_WIDTH * entry.score / best))
        table.add_row(
            str(rank),
            str(entry.position),
            quoted(entry.token),
            str(result.token_ids[entry.position]),
            f"{entry.score:.4g}",
            f"{share:.1%}",
            Text(bar, style="rgb(227,26,28)"),
        )
    return table


def _source_table(result: TracedScores, by: str, top_k: int, include_template: bool) -> Table:
    sources = result.by(by, include_template=include_template)
    shown = sources.top(top_k)
    best = shown[0].score if len(shown) and shown[0].score > 0 else 1.0
    table = Table(title=f"top {len(shown)} of {len(sources)} sources by {sources.grouping}", title_justify="left",
                  header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("source", min_width=24)
    table.add_column("tokens", justify="right")
    table.add_column("score", justify="right")
    table.add_column("share", justify="right")
    table.add_column("", no_wrap=True)
    for row in shown:
        bar = "█" * max(0, round(_BAR_WIDTH * row.score / best))
        table.add_row(str(row.rank), row.name, f"{row.tokens[0]}…{row.tokens[1] - 1}", f"{row.score:.4g}",
                      f"{row.share:.1%}", Text(bar, style="rgb(227,26,28)"))
    if sources.total > 0 and sources.outside_score > 0:
        outside = sources.outside_score / sources.total
        table.caption = f"outside every {sources.grouping.replace('_', ' ')}: {outside:.1%} of the score"
        table.caption_justify = "left"
    return table


def _template_line(result: TracedScores, include_template: bool) -> Text:
    count = int(result.template_mask[: result.prompt_length].sum())
    line = Text("template: ", style="bold")
    line.append(f"{count} template/special prompt tokens hold {result.template_share:.1%} of the score")
    if not include_template and count:
        line.append(" (dimmed, left out of the tables; --include-template keeps them)", style="dim")
    return line


def _rho_line(result: TracedScores) -> Text:
    line = Text("ρ per hop: ", style="bold")
    line.append("  ".join(f"ρ{str(k).translate(_SUBSCRIPT)} = {rho:.3f}" for k, rho in enumerate(result.rho)))
    line.append("  (share of each hop's mass that flowed through the reasoning)", style="dim")
    return line


def _timings_line(timings: Mapping[str, float]) -> Text:
    main = [f"{_TIMING_NAMES[key]} {timings[key]:.2f} s" for key in _TIMING_NAMES if key in timings]
    hops = [f"hop {key[3:-2]} {value:.2f} s" for key, value in timings.items() if key.startswith("hop")]
    line = Text("timings: ", style="bold")
    line.append(" · ".join(main) + (f" ({', '.join(hops)})" if hops else ""))
    return line


def _image_grid(image: ImageView) -> Text:
    """The image's cells as blocks, two characters each, shaded and coloured by intensity (averaged over square
    blocks of cells when the grid is wider than ``_GRID_COLUMNS``)."""
    step = -(-image.cols // _GRID_COLUMNS)  # cells per block side
    heat = np.zeros((image.rows, image.cols))
    for cell in image.cells:
        heat[cell.row, cell.col] = cell.intensity
    rows, cols = -(-image.rows // step), -(-image.cols // step)
    pooled, counts = np.zeros((rows, cols)), np.zeros((rows, cols))
    blocks = (np.arange(image.rows)[:, None] // step, np.arange(image.cols)[None, :] // step)
    np.add.at(pooled, blocks, heat)
    np.add.at(counts, blocks, 1.0)
    pooled = pooled / counts
    text = Text()
    for r in range(rows):
        for c in range(cols):
            value = float(pooled[r, c])
            rgb = heat_rgb(value)
            shade = _SHADES[min(int(value * len(_SHADES)), len(_SHADES) - 1)]
            text.append(shade * 2, style=Style(color=Color.from_rgb(*rgb)) if rgb is not None else None)
        if r < rows - 1:
            text.append("\n")
    if step > 1:
        text.append(f"\n(each block: {step}×{step} tokens)", style="dim")
    return text
