"""Pieces of a text: sentences, lines, and where its content ends.

Sentences: a sentence ends at a newline, or after a run of ``.``, ``!`` or ``?`` followed by whitespace or the
end of the text ("3.5" and "e.g.x" do not split); lines end at newlines. ``<think>`` and ``</think>`` tags end a
sentence or line and belong to none; pieces are stripped of surrounding whitespace and blank ones dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .layout import CharRange

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Piece boundaries: an ``end`` match belongs to the piece before it, a ``cut`` match to no piece.
_SENTENCE_END = re.compile(r"(?P<end>[.!?]+(?=\s|$))|(?P<cut>\n|</?think>)")
_LINE_END = re.compile(r"(?P<cut>\n|</?think>)")


def split_sentences(text: str) -> list[CharRange]:
    """Character ranges of the sentences of ``text`` (rule in the module docstring), stripped, non-blank."""
    return _pieces(text, _SENTENCE_END)


def split_lines(text: str) -> list[CharRange]:
    """Character ranges of the non-blank lines of ``text``, stripped."""
    return _pieces(text, _LINE_END)


def _pieces(text: str, boundary: re.Pattern[str]) -> list[CharRange]:
    pieces, begin = [], 0
    for match in boundary.finditer(text):
        pieces.append((begin, match.start() if match.lastgroup == "cut" else match.end()))
        begin = match.end()
    pieces.append((begin, len(text)))
    return [piece for piece in (strip_range(text, a, b) for a, b in pieces) if piece is not None]


def strip_range(text: str, start: int, end: int) -> CharRange | None:
    """``[start, end)`` without surrounding whitespace; None when nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def content_end(text: str, special_tokens: Sequence[str]) -> int:
    """Where ``text`` ends once trailing whitespace and special tokens (``<|im_end|>``, EOS) are cut off."""
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in special_tokens if 0 < len(t) <= end and text.startswith(t, end - len(t))), None)
        if token is None:
            return end
        end -= len(token)

