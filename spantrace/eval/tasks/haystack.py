"""The haystack the generated tasks hide their needles in, shared by the RULER tasks and docs_needle.

Two kinds: ``essay`` (consecutive words of the bundled public-domain text, cut into sentences) and
``noise`` (one repeated line). ``insert_needles`` puts needles at sentence boundaries drawn from RULER's depths
(essay) or at line slots (noise); ``fit_haystack`` finds the largest haystack whose prompt fits a token length.
Keys of the needles are ``adjective-noun`` pairs from the word lists here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ...errors import InputError
from ..prompts import Sample
from .files import data_file

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # 0, 3, 5, 8, …, 97, 100
HAYSTACKS = ("essay", "noise")
ADJECTIVES = (
    "amber brave calm dapper eager fancy gentle hollow icy jolly keen lively mellow nimble odd proud quiet "
    "rapid shiny tidy upbeat vivid witty young zesty bold crisp dusty faint grand humble loyal misty noble "
    "polite rusty silent tender velvet wooden"
).split()
NOUNS = (
    "anchor basket candle dolphin engine falcon garden harbor island jacket kettle lantern meadow needle "
    "orchard pebble quarry river saddle tunnel umbrella valley wagon yard zipper bench cliff drum feather "
    "glacier hammer ladder mirror pillow rocket spoon tower violin window"
).split()
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def fit_haystack(
    make: Callable[[int], Sample], length: int, count_tokens: Callable[[str, str], int], smallest: int
) -> Sample:
    """The sample with the largest haystack (≥ ``smallest`` units) whose prompt has at most ``length`` tokens."""

    def fits(size: int) -> bool:
        sample = make(size)
        return count_tokens(sample.text, sample.answer_prefix) <= length

    if not fits(smallest):
        raise InputError(f"a context length of {length} tokens is too short for this task; raise --length")
    low, high = smallest, 2 * smallest
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return make(low)


@lru_cache(maxsize=2)
def essay_words(path: Path | None) -> tuple[str, ...]:
    """The words of the essay haystack: the bundled text, or the file at ``path``."""
    path = path or data_file("haystack_public_domain.txt")
    return tuple(path.read_text(encoding="utf-8").split())


def haystack_pieces(kind: str, size: int, words: tuple[str, ...]) -> list[str]:
    """``size`` units of haystack as a list of pieces: noise lines, or essay sentences of ``size`` words."""
    if kind == "noise":
        return [NOISE_LINE] * size
    text = " ".join(words[i % len(words)] for i in range(size))
    return [piece for piece in _SENTENCE_END.split(text) if piece]


def insert_needles(
    pieces: list[str], needles: list[str], kind: str, rng: random.Random
) -> tuple[str, list[tuple[int, int]]]:
    """Insert ``needles`` (in order) into the haystack pieces; the joined text and each needle's char span.

    essay: at sentence boundaries drawn from ``DEPTHS`` without replacement, pieces joined by spaces;
    noise: at line slots drawn without replacement, joined by newlines.
    """
    if kind == "essay":
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        slots = [int(len(pieces) * depth / 100) for depth in depths]
        separator = " "
    else:
        slots = sorted(rng.sample(range(len(pieces) + 1), len(needles)))
        separator = "\n"
    by_slot: dict[int, list[int]] = {}
    for needle_index, slot in enumerate(slots):
        by_slot.setdefault(slot, []).append(needle_index)
    parts: list[tuple[str, int | None]] = []
    for slot in range(len(pieces) + 1):
        parts.extend((needles[i], i) for i in by_slot.get(slot, []))
        if slot < len(pieces):
            parts.append((pieces[slot], None))
    text, spans, cursor = [], [(0, 0)] * len(needles), 0
    for number, (piece, needle_index) in enumerate(parts):
        if number:
            text.append(separator)
            cursor += len(separator)
        if needle_index is not None:
            spans[needle_index] = (cursor, cursor + len(piece))
        text.append(piece)
        cursor += len(piece)
    return "".join(text), spans
