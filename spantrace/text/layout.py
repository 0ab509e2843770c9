"""Where things sit: character ranges, the given pieces of an input, and every token's place in the text.

A ``Layout`` holds the text the model read (prompt followed by generation), each token's ``[start, end)``
character range in it, the pieces somebody gave (``Segment``: a message's content, a document, a tool call,
tool definitions) with their character and token ranges, and which tokens are template scaffolding.

One char→token rule everywhere: a token belongs to the range holding its *anchor*, its first non-space
character (``anchor``, ``assign``), so every token goes to at most one range and pooled scores add up.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SEGMENT_KINDS = ("message", "document", "tool_call", "tools", "scaffold", "image")  # scaffold: text spantrace adds

CharRange = tuple[int, int]
Pair = tuple[int, int]


@dataclass(frozen=True)
class ImageGrid:
    """Where an image's tokens sit on the picture. After the vision tower's merger the image is ``rows × cols``
    tokens, row-major: the token at offset ``r * row_stride + c`` from the image's first token covers the cell at
    row ``r``, column ``c`` (``cell_offset``, the one rule every reader of the grid uses).

    size: the original image's ``(width, height)`` in pixels. input_size: ``(width, height)`` of the picture the
    processor fed the vision tower (resized, cropped). cell: ``(width, height)`` in ``input_size`` pixels of
    one token's cell (patch size × merge). preview: a small PNG of the image as a ``data:`` URI, for the views.
    row_stride: tokens from one row's start to the next's, when each row is followed by tokens that are not
    cells (Pixtral's ``[IMG_BREAK]``: ``cols + 1``); None when the rows follow each other directly (``cols``).
    The image's tokens then run from its first cell to its last, ``span`` of them, the breaks between rows
    included (template, like the markers around an image).
    """

    rows: int
    cols: int
    size: Pair
    input_size: Pair
    cell: Pair
    preview: str | None = None
    row_stride: int | None = None

    @property
    def span(self) -> int:
        """How many tokens lie from the first cell's token to the last's, both included (breaks counted)."""
        return (self.rows - 1) * (self.row_stride or self.cols) + self.cols

    def cell_offset(self, row: int, col: int) -> int:
        """The token of cell ``(row, col)``, counted from the image's first token."""
        return row * (self.row_stride or self.cols) + col

    def cell_offsets(self) -> list[int]:
        """Every cell's token offset from the image's first token, row-major (``rows × cols`` of them)."""
        return [self.cell_offset(row, col) for row in range(self.rows) for col in range(self.cols)]

    def to_dict(self) -> dict[str, Any]:
        stride = {"row_stride": self.row_stride} if self.row_stride is not None else {}  # other grids' JSON unchanged
        return {"rows": self.rows, "cols": self.cols, "size": list(self.size), "input_size": list(self.input_size),
                "cell": list(self.cell), "preview": self.preview, **stride}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageGrid:
        def pair(key: str) -> Pair:
            first, second = data[key]
            return _positive(first, key), _positive(second, key)

        preview = data.get("preview")
        if preview is not None and not (isinstance(preview, str) and preview.startswith(PREVIEW_PREFIX)):
            raise ValueError(f"an image preview must be a {PREVIEW_PREFIX}… URI")
        cols, stride = _positive(data["cols"], "cols"), data.get("row_stride")
        if stride is not None and _positive(stride, "row_stride") < cols:
            raise ValueError(f"an image's row_stride must be at least its {cols} columns; got {stride}")
        return cls(rows=_positive(data["rows"], "rows"), cols=cols, size=pair("size"),
                   input_size=pair("input_size"), cell=pair("cell"), preview=preview, row_stride=stride)


PREVIEW_PREFIX = "data:image/png;base64,"  # the one kind of picture a layout carries (drawn under a strict CSP)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"image {name} must be positive whole numbers; got {value!r}")
    return value


@dataclass(frozen=True)
class Segment:
    """A piece of the input that somebody gave: a message's content, a document, a tool call, tool definitions.

    chars: ``[start, end)`` in the layout's text. tokens: ``[start, end)`` token positions once tokenised
    (None when no token falls in it). role/message: the message's role and index (documents and tool calls
    carry the message they sit in). index: the piece's number among its kind (message 3, document 0, …).
    image: for an ``"image"`` segment, its grid of tokens and its sizes (``ImageGrid``).
    """

    kind: str
    name: str
    chars: CharRange
    tokens: tuple[int, int] | None = None
    role: str | None = None
    index: int = 0
    message: int | None = None
    image: ImageGrid | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {"image": self.image.to_dict()} if self.image is not None else {}  # text-only JSON stays as it was
        return {
            "kind": self.kind,
            "name": self.name,
            "chars": list(self.chars),
            "tokens": list(self.tokens) if self.tokens is not None else None,
            "role": self.role,
            "index": self.index,
            "message": self.message,
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        tokens = data.get("tokens")
        return cls(
            kind=str(data["kind"]),
            name=str(data["name"]),
            chars=(int(data["chars"][0]), int(data["chars"][1])),
            tokens=(int(tokens[0]), int(tokens[1])) if tokens is not None else None,
            role=data.get("role"),
            index=int(data.get("index", 0)),
            message=data.get("message"),
            image=ImageGrid.from_dict(data["image"]) if data.get("image") is not None else None,
        )


@dataclass(frozen=True)
class Layout:
    """Every token's character range in ``text`` (the prompt followed by the generation), the given pieces
    (``segments``), and which tokens are template scaffolding or special tokens (``template``).

    source: ``"chat"`` (rendered by the chat template), ``"text"`` (a plain prompt) or ``"tokens"`` (built
    from token strings alone, for runs made from token ids: no messages or documents).
    """

    text: str
    offsets: list[CharRange]
    segments: list[Segment]
    template: list[bool]
    source: str = "chat"

    def of_kind(self, kind: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "offsets": [list(o) for o in self.offsets],
            "segments": [s.to_dict() for s in self.segments],
            "template": [bool(t) for t in self.template],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            text=str(data["text"]),
            offsets=[(int(a), int(b)) for a, b in data["offsets"]],
            segments=[Segment.from_dict(s) for s in data["segments"]],
            template=[bool(t) for t in data["template"]],
            source=str(data.get("source", "chat")),
        )


def anchor(text: str, chars: CharRange) -> int | None:
    """The character that places a token: its first non-space character (its first one when it is all
    whitespace); None for a token that carries no character (an added BOS)."""
    start, end = chars
    if start >= end:
        return None
    for position in range(start, min(end, len(text))):
        if not text[position].isspace():
            return position
    return start


def assign(text: str, offsets: Sequence[CharRange], ranges: Sequence[CharRange]) -> list[int | None]:
    """For each token, the index of the range in ``ranges`` (sorted, disjoint) that holds its anchor; else None.
    Every token goes to at most one range, so pooled scores add up."""
    starts = [a for a, _ in ranges]
    owners: list[int | None] = []
    for chars in offsets:
        position = anchor(text, chars)
        owner = None
        if position is not None:
            k = bisect.bisect_right(starts, position) - 1
            if k >= 0 and ranges[k][0] <= position < ranges[k][1]:
                owner = k
        owners.append(owner)
    return owners


def build_layout(
    text: str,
    offsets: Sequence[CharRange],
    segments: Sequence[Segment],
    special: Sequence[bool],
    *,
    source: str,
) -> Layout:
    """The ``Layout`` of tokens with ``offsets`` in ``text``: token ranges of the segments, and the template mask
    (special tokens, and tokens whose anchor lies in no message, document or tool definition). An image's
    tokens are sources, not template, although the image token is a special one."""

    segments = list(segments)
    given = assign(text, offsets, merge_ranges([s.chars for s in segments if s.kind in ("message", "tools")]))
    scaffold = assign(text, offsets, merge_ranges([s.chars for s in segments if s.kind == "scaffold"]))
    image = assign(text, offsets, merge_ranges([s.chars for s in segments if s.kind == "image"]))
    template = [
        image[p] is None and (bool(special[p]) or given[p] is None or scaffold[p] is not None)
        for p in range(len(offsets))
    ]
    anchors = np.array([-1 if (a := anchor(text, chars)) is None else a for chars in offsets], dtype=np.int64)
    placed = []
    for segment in segments:
        start, end = segment.chars
        inside = np.flatnonzero((anchors >= start) & (anchors < end))
        tokens = (int(inside[0]), int(inside[-1]) + 1) if inside.size else None
        placed.append(replace(segment, tokens=tokens))
        if segment.kind == "image" and segment.image is not None and tokens is not None:
            _mark_row_breaks(template, tokens, segment.image)
    return Layout(text=text, offsets=[tuple(o) for o in offsets], segments=placed, template=template, source=source)


def _mark_row_breaks(template: list[bool], tokens: tuple[int, int], grid: ImageGrid) -> None:
    """The tokens inside an image's range that are no cell of its grid (row breaks) marked template, in place."""
    cells = {tokens[0] + offset for offset in grid.cell_offsets()}
    for position in range(*tokens):
        if position not in cells:
            template[position] = True


def merge_ranges(ranges: Sequence[CharRange]) -> list[CharRange]:
    """``ranges`` sorted, with overlapping and touching ones merged: the sorted, disjoint ranges ``assign`` takes."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def layout_from_tokens(
    tokens: Sequence[str], special: Sequence[bool], images: Sequence[tuple[int, int, ImageGrid]] = ()
) -> Layout:
    """A layout for a run made from token ids: the token strings joined, no messages or documents. ``images``:
    each image's token range ``[start, end)`` and grid (a run given raw image inputs), one ``"image"`` segment
    each, whose tokens are sources, not template, though the image token is a special one."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token)
    template = [bool(s) for s in special]
    segments = []
    for k, (start, end, grid) in enumerate(images):
        name = f"image {k} ({grid.size[0]}×{grid.size[1]})"
        segments.append(Segment("image", name, (offsets[start][0], offsets[end - 1][1]), tokens=(start, end),
                                index=k, image=grid))
        template[start:end] = [False] * (end - start)
        _mark_row_breaks(template, (start, end), grid)
    return Layout(text="".join(tokens), offsets=offsets, segments=segments, template=template, source="tokens")


