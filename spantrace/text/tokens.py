from __future__ import annotations

import unicodedata


def is_stop_token(token: str) -> bool:
    """A token made only of punctuation and whitespace."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in token)
