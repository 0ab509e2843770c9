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

SEGMENT_KINDS = ("message", "document", "tool_call", "tools", "scaffold")  # scaffold: layout text spantrace adds

CharRange = tuple[int, int]


@dataclass(frozen=True)
class Segment:
    """A piece of the input that somebody gave: a message's content, a document, a tool call, tool definitions.

    chars: ``[start, end)`` in the layout's text. tokens: ``[start, end)`` token positions once tokenised
    (None when no token falls in it). role/message: the message's role and index (documents and tool calls
    carry the message they sit in). index: the piece's number among its kind (message 3, document 0, …).
    """

    kind: str
    name: str
    chars: CharRange
    tokens: tuple[int, int] | None = None
    role: str | None = None
    index: int = 0
    message: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "chars": list(self.chars),
            "tokens": list(self.tokens) if self.tokens is not None else None,
            "role": self.role,
            "index": self.index,
            "message": self.message,
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
    (special tokens, and tokens whose anchor lies in no message, document or tool definition)."""

    segments = list(segments)
    given = assign(text, offsets, merge_ranges([s.chars for s in segments if s.kind in ("message", "tools")]))
    scaffold = assign(text, offsets, merge_ranges([s.chars for s in segments if s.kind == "scaffold"]))
    template = [bool(special[p]) or given[p] is None or scaffold[p] is not None for p in range(len(offsets))]
    anchors = np.array([-1 if (a := anchor(text, chars)) is None else a for chars in offsets], dtype=np.int64)
    placed = []
    for segment in segments:
        start, end = segment.chars
        inside = np.flatnonzero((anchors >= start) & (anchors < end))
        tokens = (int(inside[0]), int(inside[-1]) + 1) if inside.size else None
        placed.append(replace(segment, tokens=tokens))
    return Layout(text=text, offsets=[tuple(o) for o in offsets], segments=placed, template=template, source=source)


def merge_ranges(ranges: Sequence[CharRange]) -> list[CharRange]:
    """``ranges`` sorted, with overlapping and touching ones merged: the sorted, disjoint ranges ``assign`` takes."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def layout_from_tokens(tokens: Sequence[str], special: Sequence[bool]) -> Layout:
    """A layout for a run made from token ids: the token strings joined, no messages or documents."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token)
    return Layout(text="".join(tokens), offsets=offsets, segments=[], template=[bool(s) for s in special],
                  source="tokens")


