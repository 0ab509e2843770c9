"""``TraceResult``: what a trace produced and how it was made, with JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultFormatError

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
    IFR only). timings: seconds. info: model, method options, versions, notes.
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

    def top(self, k: int = 10) -> list[TopToken]:
        """The ``k`` prompt tokens with the highest final score, best first (ties by position)."""
        prompt = self.prompt_scores
        order = sorted(range(len(prompt)), key=lambda i: (-float(prompt[i]), i))[: max(k, 0)]
        return [TopToken(position=i, token=self.tokens[i], score=float(prompt[i])) for i in order]

    # views (spantrace.render, imported when asked for) ------------------------------------------------
    def to_html(self, path: str | Path | None = None, *, top_k: int = 10) -> str:
        """The self-contained HTML report (heatmap per hop, top-k table); also written to ``path`` when given."""
        from .render.html import render_html

        html = render_html(self, top_k=top_k)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(html, encoding="utf-8")
        return html

    def show(self, *, top_k: int = 10) -> None:
        """Print the terminal view: the prompt coloured by score, the span, the top-k tokens, ρ and timings."""
        from .render.terminal import render_terminal

        render_terminal(self, top_k=top_k)

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
