"""What the terminal and HTML views share: score → intensity → colour, and how a token is shown."""

from __future__ import annotations

import numpy as np

RGB = tuple[int, int, int]

# Colour ramp, white → yellow → orange → dark red (after ColorBrewer YlOrRd); stop positions in [0, 1].
_RAMP: list[tuple[float, RGB]] = [
    (0.0, (255, 255, 255)),
    (0.2, (255, 237, 160)),
    (0.45, (254, 178, 76)),
    (0.7, (240, 59, 32)),
    (1.0, (170, 0, 38)),
]
DARK_FROM = 0.68  # intensities above this get light text
VISIBLE_FROM = 0.01  # intensities below this get no colour at all

def intensities(scores: np.ndarray, scale_over: slice = slice(None)) -> np.ndarray:
    """scores: [N] → [N] in [0, 1], divided by the largest score in ``scale_over`` (all zeros if it is ≤ 0)."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    top = float(scores[scale_over].max()) if scores[scale_over].size else 0.0
    if top <= 0:
        return np.zeros_like(scores)
    return np.clip(scores / top, 0.0, 1.0)


def heat_rgb(intensity: float) -> RGB | None:
    """The colour of an intensity in [0, 1] on the ramp; None below ``VISIBLE_FROM`` (no colour)."""
    if intensity < VISIBLE_FROM:
        return None
    for (left, low), (right, high) in zip(_RAMP, _RAMP[1:], strict=False):
        if intensity <= right:
            t = (intensity - left) / (right - left)
            return tuple(round(a + t * (b - a)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]
    return _RAMP[-1][1]


def is_dark(intensity: float) -> bool:
    """Whether text on this intensity's colour should be light."""
    return intensity > DARK_FROM


def shown_in_text(token: str) -> str:
    """``token`` as it appears in running text: a newline keeps its line break but gets a visible ``↵``."""
    return token.replace("\n", "↵\n")


def quoted(token: str) -> str:
    """``token`` on one line with its whitespace visible, for tables: ``' apples'``, ``'\\n'``."""
    return repr(token)
