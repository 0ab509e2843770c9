"""The HTML report of a ``TraceResult``: one self-contained file (inline CSS, no script, no network).

Jinja2 renders ``templates/report.html.j2`` with autoescaping on, so every token, prompt and model
name is shown as text (a prompt holding ``<script>`` prints it). A Content-Security-Policy that allows
nothing but inline styles backs that up. Panels: the combined score first, then one per hop; each
shows the prompt and the generation with token backgrounds by score and the traced span outlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .heat import heat_rgb, intensities, is_dark, is_special, quoted, shown_in_text

if TYPE_CHECKING:
    from jinja2 import Environment

    from ..result import TraceResult

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


def render_html(result: TraceResult, *, top_k: int = 10) -> str:
    """The report for ``result`` as one HTML document (a string)."""
    return environment().get_template("report.html.j2").render(**_context(result, top_k))


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


def _context(result: TraceResult, top_k: int) -> dict[str, Any]:
    start, end = result.span
    info = result.info
    options = info.get("options", {})
    prompt_total = float(np.clip(result.prompt_scores, 0, None).sum())
    top = [
        {
            "rank": rank,
            "position": entry.position,
            "token": quoted(entry.token),
            "token_id": result.token_ids[entry.position],
            "score": entry.score,
            "share": entry.score / prompt_total if prompt_total > 0 else 0.0,
        }
        for rank, entry in enumerate(result.top(top_k), start=1)
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
        "panels": _panels(result),
        "top": top,
        "best": best,
        "timings": dict(result.timings),
        "versions": dict(info.get("versions", {})),
        "notes": list(info.get("notes", [])),
        "gradient": ", ".join(f"rgb{heat_rgb(x)}" for x in np.linspace(0.01, 1.0, 6)),
    }


def _panels(result: TraceResult) -> list[PanelView]:
    prompt = slice(0, result.prompt_length)
    panels = [
        _panel(
            result,
            result.scores,
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
    result: TraceResult,
    scores: np.ndarray,
    *,
    scale_over: slice,
    title: str,
    note: str,
    is_open: bool,
    mark_sinks: bool,
) -> PanelView:
    heat = intensities(scores, scale_over)
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
            )
        )
    prompt_length = result.prompt_length
    return PanelView(
        title=title,
        note=note,
        max_score=float(np.clip(scores[scale_over], 0, None).max()) if scores[scale_over].size else 0.0,
        is_open=is_open,
        prompt=views[:prompt_length],
        before_span=views[prompt_length:start],
        span=views[start:end],
        after_span=views[end:],
    )


def _subscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
