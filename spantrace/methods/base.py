"""The one interface every attribution method implements, and the check of what a method returns
(``checked_scores``: built-in or registered from outside, a method's output is checked before it is used)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import NonFiniteError, RegistryError
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


def checked_scores(method: AttributionMethod, result: object, num_tokens: int, hop: int) -> SinkScores:
    """``result`` of ``method.score`` at ``hop``, checked: a SinkScores whose ``scores`` are a 1-D floating-point
    CPU tensor of ``num_tokens`` finite numbers; RegistryError (or NonFiniteError) naming the class otherwise."""
    owner = f"{type(method).__module__}.{type(method).__qualname__}"
    if not isinstance(result, SinkScores):
        raise RegistryError(f"{owner}.score must return a SinkScores; it returned {type(result).__name__}")
    scores = result.scores
    if not isinstance(scores, torch.Tensor):
        raise RegistryError(f"{owner}.score returned scores of type {type(scores).__name__}; they must be a tensor")
    if scores.dim() != 1 or scores.shape[0] != num_tokens:
        raise RegistryError(
            f"{owner}.score returned scores of shape {tuple(scores.shape)}; they must be 1-D, one per token "
            f"({num_tokens})"
        )
    if not scores.dtype.is_floating_point:
        raise RegistryError(f"{owner}.score returned {scores.dtype} scores; they must be floating point")
    if scores.device.type != "cpu":
        raise RegistryError(f"{owner}.score returned scores on {scores.device}; move them to the CPU (.cpu())")
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteError(
            f"method {method.name!r} gave non-finite scores at hop {hop} although the model's forward was finite: "
            "try another method, or load the model in float32"
        )
    return result
