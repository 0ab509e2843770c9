"""The one interface every attribution method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..protocols import RunView


@dataclass(frozen=True)
class SinkScores:
    """Scores of every position for one weighted sink set.

    scores: [N] float32. rows: [M', N] float32 per-sink rows where a method has them (token-wise
    IFR), else None, with row_positions [M'] the sink position of each row. notes: anything
    degenerate met on the way (zero mass, ...).
    """

    scores: torch.Tensor
    rows: torch.Tensor | None = None
    row_positions: torch.Tensor | None = None
    notes: tuple[str, ...] = ()


class AttributionMethod(ABC):
    """Scores how much each earlier position fed a weighted set of sink positions."""

    name: ClassVar[str]
    description: ClassVar[str]
    cost: ClassVar[str] = ""  # cost class shown by `spantrace methods`, e.g. "O(k·forward)"
    signed: ClassVar[bool] = False  # scores may be negative (hop weights and ρ then use the positive part)

    @abstractmethod
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        """sinks: [M] positions; sink_weights: [M] ≥ 0, not all zero -> scores over all N positions."""
