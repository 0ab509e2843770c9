"""Gradient × input: ``s(j) = agg_d(x_j ⊙ ∂f/∂x_j)`` over the input embedding ``x_j`` of each position.

``f`` is the span's weighted, teacher-forced log-probability (see ``objective``): the token at sink i is
predicted by the logits at i − 1. ``aggregate="l2"`` (default) takes the L2 norm of ``x_j ⊙ ∂f/∂x_j``
over the model width (non-negative, like the IFR scores); ``"sum"`` takes its sum (signed: the
first-order Taylor share of position j in ``f``). One forward and one backward pass.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import SpanTraceError
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .objective import (
    embedding_gradients,
    input_embeddings,
    objective_for,
    require_one_embedding_channel,
    scores_over_run,
)
from .registry import register_method

AGGREGATES = ("l2", "sum")


@register_method
class GradientInput(AttributionMethod):
    name = "grad-input"
    description = "Gradient × input embedding of the span's teacher-forced log-probability (L2 over the width)."
    cost: ClassVar[str] = "O(forward + backward)"

    def __init__(self, aggregate: str = "l2") -> None:
        if aggregate not in AGGREGATES:
            raise SpanTraceError(f"grad-input aggregates with one of {AGGREGATES}; got {aggregate!r}")
        self.aggregate = aggregate
        self.signed = aggregate == "sum"  # "l2" scores are never negative

    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        require_one_embedding_channel(run, self.name)
        objective = objective_for(run, sinks, sink_weights)
        if objective is None:
            return SinkScores(scores=torch.zeros(run.num_tokens), notes=("no sink can be predicted; scores are 0",))
        ids = torch.tensor(run.token_ids[: objective.length], dtype=torch.long)
        embeddings = input_embeddings(run, ids)[None]  # [1, T, D]
        _, gradient = embedding_gradients(run, objective, embeddings)
        product = (gradient.float() * embeddings.float())[0]  # [T, D]
        per_position = product.norm(dim=-1) if self.aggregate == "l2" else product.sum(-1)  # [T]
        return SinkScores(scores=scores_over_run(run, per_position), notes=objective.notes)
