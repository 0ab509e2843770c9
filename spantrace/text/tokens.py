"""Token rules: which tokens are special (control tokens), which are stop tokens, each token's text, and runs of
marked tokens (an image's placeholder tokens)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>|</?s>|<unk>|<pad>|<bos>|<eos>")
REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to
MAX_CHARACTER_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so byte-level BPE splits it into ≤ 4 tokens


def is_stop_token(token: str) -> bool:
    """A token made only of punctuation and whitespace."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in token)


def is_special(token: str) -> bool:
    """Whether ``token`` looks like a control token (``<|im_start|>``, ``</s>``, …)."""
    return SPECIAL_TOKEN.fullmatch(token) is not None


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, ``<|im_start|>``, …)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in decoder.items() if getattr(token, "special", False))
    return ids


def token_strings(tokenizer: Any | None, ids: Sequence[int]) -> list[str]:
    """Each token's text (its id as text without a tokenizer). A character whose bytes span several tokens goes
    whole to the first of them and the others get "" (decoded alone, each would be a replacement character)."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    ids = [int(i) for i in ids]
    pieces = [tokenizer.decode([i]) for i in ids]
    index = 0
    while index < len(pieces):
        if REPLACEMENT in pieces[index]:
            for end in range(index + 2, min(index + MAX_CHARACTER_TOKENS, len(ids)) + 1):
                joined = tokenizer.decode(ids[index:end])
                if REPLACEMENT not in joined:  # the shortest run of tokens that completes the character
                    pieces[index:end] = [joined] + [""] * (end - index - 1)
                    index = end - 1
                    break
        index += 1
    return pieces


def runs(flags: Iterable[bool]) -> list[tuple[int, int]]:
    """``[start, end)`` of each maximal run of true ``flags``, in order (e.g. the tokens of each image: the runs of
    its placeholder token)."""
    found: list[tuple[int, int]] = []
    start = None
    for position, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            found.append((start, position))
            start = None
    return found
