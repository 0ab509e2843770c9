"""What the views read of a trace: ``TracedScores``, the Protocol that ``spantrace.result.TraceResult`` satisfies.

The renderers sit below the result type (``TraceResult.to_html`` and ``show`` call them), so they name it by
this Protocol instead of importing it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..groups import SourceTable
from ..text.layout import Layout


class RankedToken(Protocol):
    """One entry of ``top``: a prompt position, its token and its final score."""

    position: int
    token: str
    score: float


class TracedScores(Protocol):
    """Scores of every position for one traced span, with where each token sits (fields: ``TraceResult``)."""

    tokens: list[str]
    token_ids: list[int]
    prompt_length: int
    span: tuple[int, int]
    method: str
    scores: np.ndarray
    hop_scores: list[np.ndarray]
    rho: list[float]
    recursive_span: tuple[int, int]
    timings: dict[str, float]
    info: dict[str, Any]
    layout: Layout

    @property
    def num_tokens(self) -> int: ...

    @property
    def hops(self) -> int: ...

    @property
    def prompt_scores(self) -> np.ndarray: ...

    @property
    def template_mask(self) -> np.ndarray: ...

    @property
    def template_share(self) -> float: ...

    def top(self, k: int = 10, *, include_template: bool = False) -> Sequence[RankedToken]: ...

    def by(self, grouping: Any, *, include_template: bool = False) -> SourceTable: ...

    def groupings(self) -> list[str]: ...
