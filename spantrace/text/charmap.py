"""Characters → tokens for generated ids: the character range of the decoded text that each token carries.

The generated text is ``tokenizer.decode(generated ids)``; each generated token carries a character range
``[start, end)`` of it (``CharMap``), built one of two ways:

- ``"offsets"``: when the fast tokenizer re-encodes that text into exactly the run's generated ids, its
  offset mapping gives the ranges;
- ``"decode"``: otherwise (the ids do not round-trip, or the tokenizer has no offsets), the ranges come
  from decoding growing prefixes of the run's own ids: ``decode(ids[:k])`` for k = 0…M.

Either way a character whose bytes are split over several byte-level tokens belongs to every token that
carries one of its bytes. A character range selects every token whose range overlaps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .layout import CharRange


@dataclass(frozen=True)
class CharMap:
    """The generated text and the character range each generated token carries.

    text: ``decode(generated ids)``. starts, ends: [M] per generated token, ``[start, end)`` in ``text``.
    source: ``"offsets"`` (the tokenizer's offset mapping) or ``"decode"`` (decoded prefixes of the ids).
    special_tokens: the tokenizer's special token strings (stripped from the end of text spans).
    """

    text: str
    starts: list[int]
    ends: list[int]
    source: str
    special_tokens: tuple[str, ...] = ()

    def token_range(self, chars: CharRange) -> tuple[int, int] | None:
        """``(first, last + 1)`` of the generated tokens overlapping ``chars``, or None when none does."""
        start, end = chars
        hits = [k for k, (a, b) in enumerate(zip(self.starts, self.ends, strict=True)) if a < end and b > start]
        return (hits[0], hits[-1] + 1) if hits else None


# --- the character map -----------------------------------------------------------------------------


def build_char_map(tokenizer: Any, ids: Sequence[int]) -> CharMap:
    """The ``CharMap`` of the generated token ``ids`` (offsets when they round-trip, else decoded prefixes)."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids)
    special = tuple(sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True))
    offsets = _exact_offsets(tokenizer, text, ids)
    if offsets is not None:
        return CharMap(text, [a for a, _ in offsets], [b for _, b in offsets], "offsets", special)
    starts, ends = _decoded_ranges(tokenizer, ids, text)
    return CharMap(text, starts, ends, "decode", special)


def _exact_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[CharRange] | None:
    """The fast tokenizer's offsets for ``text`` if re-encoding it gives exactly ``ids``, else None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if [int(i) for i in encoded["input_ids"]] != ids:
        return None
    offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
    if not all(0 <= a <= b <= len(text) for a, b in offsets):
        return None
    return offsets


def _decoded_ranges(tokenizer: Any, ids: list[int], text: str) -> tuple[list[int], list[int]]:
    """Per-token ``[start, end)`` from decoding growing prefixes of ``ids`` (O(M²) decoding work).

    ``complete[k]``: characters of ``text`` fully produced by the first k tokens (the prefix decodes to
    them, then maybe to a replacement character where a multi-byte character is cut). Token k starts
    at ``complete[k]`` and ends at ``complete[k + 1]``, plus the cut character when there is one.
    """
    complete: list[int] = []
    cut: list[bool] = []  # the first k tokens end inside a character
    done = 0
    for k in range(len(ids) + 1):
        prefix = tokenizer.decode(ids[:k]) if k else ""
        shared = _common_prefix_length(prefix, text)
        done = max(done, shared)  # keep it monotone whatever the tokenizer's clean-up does
        complete.append(done)
        cut.append(len(prefix) > shared and done < len(text))
    starts = complete[:-1]
    ends = [max(complete[k + 1] + int(cut[k + 1]), starts[k]) for k in range(len(ids))]
    return starts, ends


def _common_prefix_length(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit

