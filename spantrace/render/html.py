"""The HTML report of a ``TraceResult``: one self-contained file (inline CSS, no script, no network).

Jinja2 renders ``templates/report.html.j2`` with autoescaping on, so every token, prompt and model
name is shown as text (a prompt holding ``<script>`` prints it). A Content-Security-Policy that allows
nothing but inline styles backs that up. Panels: the combined score first, then one per hop; each
shows the prompt and the generation with token backgrounds by score and the traced span outlined.

Beside the panels, a source panel lists the context's sources (``TraceResult.by``). It works without
script, so the report keeps its strict policy: each source is a link to an empty anchor placed before the
panels, and a CSS rule per source (``#src-3:target ~ .layout .g3``) outlines that source's tokens when its
link is the page's fragment. Two radio buttons, also before the panels, switch every token's background
between its own score and its source's pooled score (``:checked ~``, the colours held in CSS variables).
Template and special tokens are greyed and left out of the colour scale unless asked for.

Each image of the context is drawn above the panels (its preview as a ``data:`` PNG, the only thing the
policy then allows besides inline styles) with a grid of its tokens' cells over it, coloured by score, each
cell's score in its tooltip (``render.picture``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..groups import SourceTable
from ..text.tokens import is_special
from .heat import heat_rgb, intensities, is_dark, quoted, shown_in_text
from .picture import image_views
from .view import TracedScores

if TYPE_CHECKING:
    from jinja2 import Environment


HOPS_OPEN_UP_TO = 600  # hop panels start unfolded when the sequence has at most this many tokens


@dataclass(frozen=True)
class TokenView:
    """One token as the template draws it."""

    position: int
    token_id: int
    text: str  # what is shown, newlines marked with ↵
    score: float
    background: str  # CSS colour, "" for none
    classes: str
    source_background: str = ""  # CSS colour of its source's pooled score, "" for none


@dataclass(frozen=True)
class PanelView:
    """One heatmap: the prompt, then the generation split around the traced span."""

    title: str
    note: str
    max_score: float
    is_open: bool
    prompt: list[TokenView]
    before_span: list[TokenView]
    span: list[TokenView]
    after_span: list[TokenView]


MAX_SOURCES_SHOWN = 200  # the source panel lists at most this many sources (the rest are summed up)


def render_html(result: TracedScores, *, top_k: int = 10, by: str | None = None, include_template: bool = False) -> str:
    """The report for ``result`` as one HTML document (a string); ``by`` is the source panel's grouping."""
    grouping = by if by is not None else default_grouping(result)
    context = _context(result, top_k, grouping, include_template)
    return environment().get_template("report.html.j2").render(**context)


def default_grouping(result: TracedScores) -> str:
    """Documents when there are some, else messages when the context has several, else images when it has
    some, else sentences."""
    groupings = result.groupings()
    if "document" in groupings:
        return "document"
    messages = [s for s in result.layout.of_kind("message") if s.tokens and s.tokens[0] < result.prompt_length]
    if len(messages) > 1:
        return "message"
    return "image" if "image" in groupings else "sentence"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment of spantrace's HTML pages (``templates/``), autoescaping every value."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("spantrace.render", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _context(result: TracedScores, top_k: int, grouping: str, include_template: bool) -> dict[str, Any]:
    start, end = result.span
    info = result.info
    options = info.get("options", {})
    greyed = np.zeros(result.num_tokens, dtype=bool) if include_template else result.template_mask
    prompt_total = float(np.clip(result.prompt_scores[~greyed[: result.prompt_length]], 0, None).sum())
    sources = result.by(grouping, include_template=include_template)
    shown = sources.top(MAX_SOURCES_SHOWN)
    source_best = max((row.score for row in shown), default=0.0)
    source_rows = [
        {
            "rank": row.rank,
            "name": row.name,
            "kind": row.kind,
            "tokens": row.tokens,
            "score": row.score,
            "share": row.share,
            "width": 100 * max(row.score, 0.0) / source_best if source_best > 0 else 0.0,
        }
        for row in shown
    ]
    top = [
        {
            "rank": rank,
            "position": entry.position,
            "token": quoted(entry.token),
            "token_id": result.token_ids[entry.position],
            "score": entry.score,
            "share": entry.score / prompt_total if prompt_total > 0 else 0.0,
        }
        for rank, entry in enumerate(result.top(top_k, include_template=include_template), start=1)
    ]
    best = top[0]["score"] if top and top[0]["score"] > 0 else 1.0
    return {
        "method": result.method,
        "model": info.get("model", "unknown model"),
        "architecture": info.get("architecture", ""),
        "span": (start, end),
        "span_text": "".join(result.tokens[start:end]),
        "prompt_length": result.prompt_length,
        "num_tokens": result.num_tokens,
        "hops": result.hops,
        "recursive": options.get("recursive", ""),
        "recursive_span": result.recursive_span,
        "rho": list(result.rho),
        "panels": _panels(result, greyed, sources),
        "images": image_views(result),  # each image with its tokens' heat on it (CSP then allows data: images)
        "grouping": sources.grouping,
        "sources": source_rows,
        "sources_left_out": len(sources) - len(shown),
        "sources_outside": sources.outside_score / sources.total if sources.total > 0 else 0.0,
        "template_count": int(result.template_mask[: result.prompt_length].sum()),
        "template_share": result.template_share,
        "include_template": include_template,
        "top": top,
        "best": best,
        "timings": dict(result.timings),
        "versions": dict(info.get("versions", {})),
        "notes": list(info.get("notes", [])),
        # "skipped" when the model was loaded with check=False: its adapter was never verified
        "self_check_skipped": info.get("self_check") == "skipped",
        "gradient": ", ".join(f"rgb{heat_rgb(x)}" for x in np.linspace(0.01, 1.0, 6)),
    }


def _panels(result: TracedScores, greyed: np.ndarray, sources: SourceTable) -> list[PanelView]:
    prompt = slice(0, result.prompt_length)
    rows = sources.top(MAX_SOURCES_SHOWN)
    rank_of = {position: row.rank for row in rows for position in row.positions}

    def source_heat(panel: int | None) -> dict[int, float]:
        """Each source's pooled score in this panel (None: combined, else the hop) over the panel's largest."""
        values = [row.score if panel is None else row.hop_scores[panel] for row in rows]
        best = max(values, default=0.0)
        return {p: max(v, 0.0) / best if best > 0 else 0.0 for row, v in zip(rows, values, strict=True)
                for p in row.positions}

    shared = {"greyed": greyed, "rank_of": rank_of}
    panels = [
        _panel(
            result,
            result.scores,
            **shared,
            source_heat=source_heat(None),
            scale_over=prompt,
            title="Combined score",
            note="What the span rests on, traced through the reasoning: hop 0 plus each later hop weighted "
            "by the ρ before it, on the prompt only.",
            is_open=True,
            mark_sinks=False,
        )
    ]
    opened = result.num_tokens <= HOPS_OPEN_UP_TO
    for hop, hop_scores in enumerate(result.hop_scores):
        rho = result.rho[hop] if hop < len(result.rho) else 0.0
        what = "the traced span" if hop == 0 else f"the reasoning (dotted), weighted by hop {hop - 1}'s scores"
        panels.append(
            _panel(
                result,
                hop_scores,
                **shared,
                source_heat=source_heat(hop),
                scale_over=slice(None),
                title=f"Hop {hop} · ρ{_subscript(hop)} = {rho:.3f}",
                note=f"Raw scores of every position for {what}; ρ{_subscript(hop)} is the share of the mass "
                "that flowed through the reasoning so far.",
                is_open=opened,
                mark_sinks=hop > 0,
            )
        )
    return panels


def _panel(
    result: TracedScores,
    scores: np.ndarray,
    *,
    greyed: np.ndarray,
    rank_of: dict[int, int],
    source_heat: dict[int, float],
    scale_over: slice,
    title: str,
    note: str,
    is_open: bool,
    mark_sinks: bool,
) -> PanelView:
    heat = intensities(np.where(greyed, 0.0, scores), scale_over)
    start, end = result.span
    g_start, g_end = result.recursive_span
    views = []
    for position, (token, token_id) in enumerate(zip(result.tokens, result.token_ids, strict=True)):
        rgb = heat_rgb(float(heat[position]))
        classes = ["t"]
        if rgb is not None and is_dark(float(heat[position])):
            classes.append("dark")
        if is_special(token):
            classes.append("special")
        if greyed[position]:
            classes.append("template")
        source_rgb = None
        if position in rank_of:
            classes.append(f"g{rank_of[position]}")
            source_rgb = heat_rgb(source_heat[position])
            if source_rgb is not None and is_dark(source_heat[position]):
                classes.append("sdark")
        if mark_sinks and g_start <= position < g_end:
            classes.append("sink")
        views.append(
            TokenView(
                position=position,
                token_id=int(token_id),
                text=shown_in_text(token),
                score=float(scores[position]),
                background=f"rgb{rgb}" if rgb is not None else "",
                classes=" ".join(classes),
                source_background=f"rgb{source_rgb}" if source_rgb is not None else "",
            )
        )
    prompt_length = result.prompt_length
    return PanelView(
        title=title,
        note=note,
        # the largest score the colour scale divides by: greyed (template) tokens are left out of both
        max_score=float(np.clip(np.where(greyed, 0.0, scores)[scale_over], 0, None).max())
        if scores[scale_over].size else 0.0,
        is_open=is_open,
        prompt=views[:prompt_length],
        before_span=views[prompt_length:start],
        span=views[start:end],
        after_span=views[end:],
    )


def _subscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
