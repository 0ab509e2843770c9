"""``TraceResult``: what a trace produced and how it was made, with JSON round-trip."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultFormatError
from .groups import SourceTable, available_groupings, pool, require_pandas
from .text.layout import Layout, assign, layout_from_tokens
from .text.tokens import is_special

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class TopToken:
    position: int
    token: str
    score: float


@dataclass(frozen=True, eq=False)
class TraceResult:
    """Scores of every position for one traced span.

    scores: [N] float32, the final combined score (0 outside the prompt).
    hop_scores: one raw [N] array per hop, hop 0 first. rho: ρ_0 … ρ_K.
    span: ``(start, end)`` token positions of the traced span (end exclusive).
    recursive_span: the sinks of hops ≥ 1. rows / row_positions: hop-0 per-sink rows (token-wise
    IFR only). timings: seconds. info: model, method options, versions, notes, template share.
    layout: every token's character range, the messages, documents and tool calls, and which tokens are
    template (``spantrace.text.layout.Layout``); pooled with ``by``.
    """

    tokens: list[str]
    token_ids: list[int]
    prompt_length: int
    span: tuple[int, int]
    method: str
    scores: np.ndarray
    hop_scores: list[np.ndarray]
    rho: list[float]
    recursive_span: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    rows: np.ndarray | None = None
    row_positions: list[int] | None = None
    layout: Layout = None  # type: ignore[assignment]  # filled from the tokens when not given

    def __post_init__(self) -> None:
        if self.layout is None:
            special = [is_special(token) for token in self.tokens]
            object.__setattr__(self, "layout", layout_from_tokens(self.tokens, special))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def hops(self) -> int:
        return len(self.hop_scores) - 1

    @property
    def prompt_scores(self) -> np.ndarray:
        """Final scores of the prompt tokens, [P]."""
        return self.scores[: self.prompt_length]

    @property
    def template_mask(self) -> np.ndarray:
        """[N] bool: chat-template scaffolding and special tokens (``<|im_start|>``, role headers, BOS, …)."""
        return np.asarray(self.layout.template, dtype=bool)

    @property
    def template_score(self) -> float:
        """The final score the prompt's template and special tokens hold (their share: ``template_share``)."""
        return float(self.prompt_scores[self.template_mask[: self.prompt_length]].sum())

    @property
    def template_share(self) -> float:
        """``template_score`` over the positive final score of the whole prompt (0 when there is none)."""
        total = float(np.clip(self.prompt_scores, 0, None).sum())
        return self.template_score / total if total > 0 else 0.0

    def top(self, k: int = 10, *, include_template: bool = False) -> list[TopToken]:
        """The ``k`` prompt tokens with the highest final score, best first (ties by position); template and
        special tokens are left out unless ``include_template``."""
        prompt = self.prompt_scores
        template = self.template_mask
        candidates = [i for i in range(len(prompt)) if include_template or not template[i]]
        order = sorted(candidates, key=lambda i: (-float(prompt[i]), i))[: max(k, 0)]
        return [TopToken(position=i, token=self.tokens[i], score=float(prompt[i])) for i in order]

    def by(self, grouping: str | Sequence[Mapping[str, Any]], *, include_template: bool = False) -> SourceTable:
        """The context's sources ranked by pooled score: ``"sentence"``, ``"message"``, ``"document"``,
        ``"tool_result"``, … or your own ``[{"name": ..., "chars": (a, b)}]`` (all: ``spantrace.groups``)."""
        return pool(self.layout, self.prompt_scores, self.hop_scores, grouping, include_template=include_template)

    def groupings(self) -> list[str]:
        """The groupings this result has boundaries for."""
        return available_groupings(self.layout)

    def to_pandas(self) -> Any:
        """One row per token: position, token, id, score, each hop's score, whether it is prompt, template or
        span, its character range, and the message, document and tool call it belongs to (needs pandas)."""
        pandas = require_pandas()
        return pandas.DataFrame.from_records(self.token_records())

    def token_records(self) -> list[dict[str, Any]]:
        """The rows of ``to_pandas`` as dicts."""
        owners = {}
        for kind in ("message", "document", "tool_call"):
            segments = self.layout.of_kind(kind)
            found = assign(self.layout.text, self.layout.offsets, [s.chars for s in segments])
            owners[kind] = [segments[o].index if o is not None else None for o in found]
        start, end = self.span
        records = []
        for position, (token, token_id) in enumerate(zip(self.tokens, self.token_ids, strict=True)):
            record: dict[str, Any] = {
                "position": position,
                "token": token,
                "token_id": token_id,
                "score": float(self.scores[position]),
            }
            record.update({f"hop{k}": float(h[position]) for k, h in enumerate(self.hop_scores)})
            chars = self.layout.offsets[position]
            record.update(
                is_prompt=position < self.prompt_length,
                is_template=bool(self.layout.template[position]),
                in_span=start <= position < end,
                char_start=chars[0],
                char_end=chars[1],
                message=owners["message"][position],
                document=owners["document"][position],
                tool_call=owners["tool_call"][position],
            )
            records.append(record)
        return records

    # views (spantrace.render, below this module; imported when asked for) ------------------------------
    def to_html(
        self,
        path: str | Path | None = None,
        *,
        top_k: int = 10,
        by: str | None = None,
        include_template: bool = False,
    ) -> str:
        """The self-contained HTML report (heatmap per hop, sources, top-k table); also written to ``path``.

        ``by`` picks the source panel's grouping (default: documents, else messages, else sentences)."""
        from .render.html import render_html

        html = render_html(self, top_k=top_k, by=by, include_template=include_template)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(html, encoding="utf-8")
        return html

    def show(self, *, top_k: int = 10, by: str | None = None, include_template: bool = False) -> None:
        """Print the terminal view: the prompt coloured by score, the span, the top-k tokens (or, with ``by``,
        the top-k sources), ρ and timings."""
        from .render.terminal import render_terminal

        render_terminal(self, top_k=top_k, by=by, include_template=include_template)

    def _repr_html_(self) -> str:
        """Jupyter: the HTML report inline, in a sandboxed frame so its page styles stay inside it."""
        from html import escape

        report = escape(self.to_html(), quote=True)
        return f'<iframe sandbox srcdoc="{report}" style="width:100%;height:640px;border:1px solid #ddd"></iframe>'


    # JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "spantrace.TraceResult",
            "format_version": FORMAT_VERSION,
            "tokens": list(self.tokens),
            "token_ids": [int(t) for t in self.token_ids],
            "prompt_length": self.prompt_length,
            "span": list(self.span),
            "method": self.method,
            "scores": _floats(self.scores),
            "hop_scores": [_floats(h) for h in self.hop_scores],
            "rho": [float(r) for r in self.rho],
            "recursive_span": list(self.recursive_span),
            "timings": dict(self.timings),
            "info": self.info,
            "rows": [_floats(r) for r in self.rows] if self.rows is not None else None,
            "row_positions": self.row_positions,
            "layout": self.layout.to_dict(),
        }

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceResult:
        if not isinstance(data, dict) or data.get("format") != "spantrace.TraceResult":
            raise ResultFormatError("not a spantrace TraceResult (missing 'format': 'spantrace.TraceResult')")
        if data.get("format_version") != FORMAT_VERSION:
            raise ResultFormatError(
                f"TraceResult format version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "it was written by another spantrace version"
            )
        try:
            rows = data.get("rows")
            return cls(
                tokens=list(data["tokens"]),
                token_ids=[int(t) for t in data["token_ids"]],
                prompt_length=int(data["prompt_length"]),
                span=(int(data["span"][0]), int(data["span"][1])),
                method=str(data["method"]),
                scores=np.asarray(data["scores"], dtype=np.float32),
                hop_scores=[np.asarray(h, dtype=np.float32) for h in data["hop_scores"]],
                rho=[float(r) for r in data["rho"]],
                recursive_span=(int(data["recursive_span"][0]), int(data["recursive_span"][1])),
                timings={str(k): float(v) for k, v in data.get("timings", {}).items()},
                info=dict(data.get("info", {})),
                rows=np.asarray(rows, dtype=np.float32) if rows is not None else None,
                row_positions=data.get("row_positions"),
                layout=Layout.from_dict(data["layout"]) if data.get("layout") else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ResultFormatError(f"malformed TraceResult JSON: {error}") from error

    @classmethod
    def from_json(cls, text: str) -> TraceResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ResultFormatError(f"not JSON: {error}") from error
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        path = Path(path)
        if not path.is_file():
            raise ResultFormatError(f"no such result file: {path}")
        return cls.from_json(path.read_text(encoding="utf-8"))


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32)]
