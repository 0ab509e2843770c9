"""``TraceResult``: what a trace produced and how it was made, with JSON round-trip."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GroupingError, ResultFormatError
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

    def image_map(self, k: int = 0) -> np.ndarray:
        """Image ``k``'s final token scores on its grid: a ``rows × cols`` float64 array, row-major as the
        tokens run (``result.layout.of_kind("image")[k].image`` has the grid and the sizes), so it sums to the
        image's score in ``by("image")``."""
        images = self.layout.of_kind("image")
        if not images:
            raise GroupingError("this result has no images; image_map needs a trace of a prompt with images")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -len(images) <= k < len(images):
            count = len(images)
            raise GroupingError(f"image {k!r} does not exist: this result has {count} image(s), 0..{count - 1}")
        segment = images[k]
        grid, (start, _) = segment.image, segment.tokens  # both present: checked when the layout is built or read
        cells = [start + offset for offset in grid.cell_offsets()]  # row breaks between the rows left out
        return np.asarray(self.scores, dtype=np.float64)[cells].reshape(grid.rows, grid.cols)

    def groupings(self) -> list[str]:
        """The groupings this result has boundaries for."""
        return available_groupings(self.layout)

    def to_pandas(self) -> Any:
        """One row per token: position, token, id, score, each hop's score, whether it is prompt, template or
        span, its character range, the message, document and tool call it belongs to, and for an image's
        token the image and its (image_row, image_col) on the image's grid (None elsewhere) (needs pandas)."""
        pandas = require_pandas()
        return pandas.DataFrame.from_records(self.token_records())

    def token_records(self) -> list[dict[str, Any]]:
        """The rows of ``to_pandas`` as dicts."""
        owners = {}
        for kind in ("message", "document", "tool_call"):
            segments = self.layout.of_kind(kind)
            found = assign(self.layout.text, self.layout.offsets, [s.chars for s in segments])
            owners[kind] = [segments[o].index if o is not None else None for o in found]
        cells: dict[int, tuple[int, int, int]] = {}  # position → (image, row, col)
        for number, segment in enumerate(self.layout.of_kind("image")):
            first, _ = segment.tokens or (0, 0)
            for cell, offset in enumerate(segment.image.cell_offsets() if segment.tokens else []):
                cells[first + offset] = (number, *divmod(cell, segment.image.cols))
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
            image, row, col = cells.get(position, (None, None, None))
            record.update(image=image, image_row=row, image_col=col)
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
        """Strict JSON (no bare ``NaN``/``Infinity``): a result holding a non-finite number is refused."""
        try:
            return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)
        except ValueError as error:  # allow_nan=False: a NaN or an infinity somewhere in the result
            raise ResultFormatError(
                f"this result holds a non-finite number (NaN or ∞) and cannot be written as JSON ({error})"
            ) from error

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceResult:
        """A result from ``to_dict``'s JSON, every field checked (``check_result_data``): ResultFormatError
        naming the field when one is missing, of the wrong type or length, non-finite or out of range."""
        return cls(**check_result_data(data))

    @classmethod
    def from_json(cls, text: str) -> TraceResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ResultFormatError(f"not JSON: {error}") from error
        except (ValueError, RecursionError) as error:  # an integer of thousands of digits; arrays nested too deep
            raise ResultFormatError(f"not a TraceResult's JSON: {str(error)[:120]}") from error
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the result as strict JSON to ``path``; returns the path."""
        path = Path(path)
        text = self.to_json()  # refused before the file is touched when it cannot be written as JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        path = Path(path)
        if not path.is_file():
            raise ResultFormatError(f"no such result file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ResultFormatError(f"{path} is not a UTF-8 text file, so not a saved TraceResult") from error
        return cls.from_json(text)


# --- checking a result's JSON ------------------------------------------------------------------------


def check_result_data(data: Any) -> dict[str, Any]:
    """The ``TraceResult`` fields of a result's JSON (``to_dict``), each checked: types, lengths (one score
    per token in ``scores`` and in every hop, one token id per token, one ρ per hop, at least hop 0), ranges
    (``prompt_length`` in 1..N, the span inside the generation), finiteness and the format version.
    Raises ResultFormatError naming the field; the viewer's results endpoint uses the same check."""
    if not isinstance(data, Mapping) or data.get("format") != "spantrace.TraceResult":
        raise ResultFormatError("not a spantrace TraceResult (missing 'format': 'spantrace.TraceResult')")
    if data.get("format_version") != FORMAT_VERSION:
        raise ResultFormatError(
            f"TraceResult format version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
            "it was written by another spantrace version"
        )
    tokens = _field_list(data, "tokens")
    if not tokens or not all(isinstance(token, str) for token in tokens):
        raise _bad("tokens", "must be a non-empty list of strings")
    n = len(tokens)
    token_ids = [_field_int(t, "token_ids") for t in _field_list(data, "token_ids", n)]
    prompt_length = _field_int(data.get("prompt_length"), "prompt_length")
    if not 1 <= prompt_length <= n:
        raise _bad("prompt_length", f"must be in 1..{n} (the number of tokens); got {prompt_length}")
    span = _field_pair(data, "span")
    if not prompt_length <= span[0] < span[1] <= n:
        raise _bad("span", f"{span} is not inside the generation (positions {prompt_length}..{n - 1}, end exclusive)")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise _bad("method", "must be a method's name (a non-empty string)")
    hop_lists = _field_list(data, "hop_scores")
    if not hop_lists:
        raise _bad("hop_scores", "needs at least hop 0 (hops ≥ 0)")
    rho = _field_scores(_field_list(data, "rho", len(hop_lists)), "rho", len(hop_lists), np.float64)  # as written
    recursive_span = _field_pair(data, "recursive_span")
    if not 0 <= recursive_span[0] <= recursive_span[1] <= n:
        raise _bad("recursive_span", f"{recursive_span} is not inside the {n} tokens")
    rows, row_positions = data.get("rows"), data.get("row_positions")
    if rows is not None:
        rows = np.stack([_field_scores(r, "rows", n) for r in _field_list(data, "rows")]) if rows else None
    if row_positions is not None:
        row_positions = [_field_int(p, "row_positions") for p in _field_list(data, "row_positions")]
        if not all(0 <= p < n for p in row_positions) or len(row_positions) != (0 if rows is None else len(rows)):
            raise _bad("row_positions", f"must be one position in 0..{n - 1} per row")
    return {
        "tokens": list(tokens),
        "token_ids": token_ids,
        "prompt_length": prompt_length,
        "span": span,
        "method": method,
        "scores": _field_scores(data.get("scores"), "scores", n),
        "hop_scores": [_field_scores(h, f"hop_scores[{k}]", n) for k, h in enumerate(hop_lists)],
        "rho": [float(r) for r in rho],
        "recursive_span": recursive_span,
        "timings": _field_timings(data.get("timings")),
        "info": _field_info(data.get("info")),
        "rows": rows,
        "row_positions": row_positions,
        "layout": _field_layout(data.get("layout"), n),
    }


def _bad(field_name: str, what: str) -> ResultFormatError:
    return ResultFormatError(f"malformed TraceResult: {field_name!r} {what}")


def _field_list(data: Mapping[str, Any], name: str, length: int | None = None) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        raise _bad(name, f"must be a list; got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise _bad(name, f"has {len(value)} entries where {length} are needed")
    return value


def _field_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _bad(name, f"must hold whole numbers; got {value!r}"[:200])
    return int(value)


def _field_pair(data: Mapping[str, Any], name: str) -> tuple[int, int]:
    first, second = _field_list(data, name, 2)
    return _field_int(first, name), _field_int(second, name)


def _field_scores(values: Any, name: str, length: int, dtype: type = np.float32) -> np.ndarray:
    """``values`` as [length] finite numbers of ``dtype`` (float32: the precision scores are kept in)."""
    if not isinstance(values, list) or len(values) != length:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise _bad(name, f"must be a list of {length} numbers (one per token, or per hop for rho); got {got}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _bad(name, "must hold numbers only")
    if not all(_fits_a_float(v) for v in values):
        raise _bad(name, "holds an integer too large for a floating-point number")
    with np.errstate(over="ignore"):  # a number too large for float32 turns into ∞, refused below
        array = np.asarray(values, dtype=np.float64).astype(dtype)
    if not np.isfinite(array).all():
        raise _bad(name, "holds a non-finite value (NaN or ∞, or beyond float32)")
    return array


def _field_timings(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and _fits_a_float(v) and np.isfinite(float(v))
        for v in value.values()
    ):
        raise _bad("timings", "must map names to finite numbers of seconds")
    return {str(k): float(v) for k, v in value.items()}


def _fits_a_float(value: int | float) -> bool:
    """Whether ``value`` converts to a float (JSON integers can have hundreds of digits; a float stops near 1e308)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _field_info(value: Any) -> dict[str, Any]:
    """``info`` as a dict whose entries the views read have the types they expect."""
    if value is None:
        return {}
    kinds = {"options": Mapping, "versions": Mapping, "notes": list, "model": str, "architecture": str}
    if not isinstance(value, Mapping) or any(
        key in value and not isinstance(value[key], kind) for key, kind in kinds.items()
    ):
        raise _bad("info", "must be an object (options and versions objects, notes a list, model a string)")
    return dict(value)


def _field_layout(value: Any, n: int) -> Layout | None:
    """The layout, checked against the tokens; None (rebuilt from the tokens) when the JSON has none."""
    if not value:
        return None
    try:
        layout = Layout.from_dict(value)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as error:
        raise _bad("layout", f"is malformed ({type(error).__name__}: {error})"[:300]) from error
    size = len(layout.text)
    if len(layout.offsets) != n or len(layout.template) != n:
        raise _bad("layout", f"must have one character range and one template flag per token ({n})")
    if not all(0 <= a <= b <= size for a, b in layout.offsets + [s.chars for s in layout.segments]):
        raise _bad("layout", f"has a character range outside its {size}-character text")
    if not all(s.tokens is None or 0 <= s.tokens[0] <= s.tokens[1] <= n for s in layout.segments):
        raise _bad("layout", f"has a segment whose tokens lie outside the {n} tokens")
    if not all(isinstance(s.role, (str, type(None))) and (s.message is None or type(s.message) is int)
               for s in layout.segments):  # Segment.from_dict passes both on as given
        raise _bad("layout", "has a segment whose role is not text or whose message is not a whole number")
    for number, image in enumerate(layout.of_kind("image")):
        count = image.tokens[1] - image.tokens[0] if image.tokens is not None else 0
        if image.image is None or count != image.image.span:
            raise _bad("layout", f"image {number} must have a grid of rows × cols matching its {count} tokens "
                       "(row breaks included)")
    return layout


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32)]
