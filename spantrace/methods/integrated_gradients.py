"""Integrated gradients (Sundararajan et al. 2017) of the span's teacher-forced log-probability.

``IG_j = Σ_d (x_j − x′_j)_d · ∫_0^1 ∂f/∂x_{j,d}(x′ + a (x − x′)) da``, with ``x`` the input embeddings
of positions ``0 … last sink − 1``, the baseline ``x′`` the embedding of the neutral token (pad, else
EOS) at every one of those positions, and ``f`` the weighted teacher-forced log-probability of the
sinks (see ``objective``). The integral is the trapezoid rule over ``steps`` equal intervals
(``steps + 1`` gradient evaluations, batched). Completeness: ``Σ_j IG_j ≈ f(x) − f(x′)``, exact as
``steps → ∞``; scores are signed.

Qwen3-VL also adds deepstack features ``d_k`` at its image positions after its first layers. The path scales them
with the embeddings: at point ``a`` the forward adds ``a · d_k``, so the baseline holds no image at all (the
neutral token, no deepstack feature) and an image position j also gets ``Σ_k d_{k,j} · ∫_0^1 ∂f/∂e_{k,j} da``
(``e_k`` the feature added): completeness holds for this ``f(x, d) − f(x′, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import SpanTraceError
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .objective import (
    auto_batch_size,
    input_embeddings,
    neutral_token_id,
    objective_for,
    path_gradients,
    require_one_embedding_channel,
    scores_over_run,
)
from .registry import register_method

DEFAULT_STEPS = 20
MAX_STEPS = 1024  # the most trapezoid intervals (each a batched forward + backward) a trace may ask for


@dataclass(frozen=True)
class IntegratedGradientsResult:
    scores: torch.Tensor  # [N] float32, 0 from the last sink on
    objective_input: float  # f(x)
    objective_baseline: float  # f(x′)
    notes: tuple[str, ...] = ()


def trapezoid(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``a_k = k / steps`` (k = 0 … steps) and their trapezoid weights, both [steps + 1] float32."""
    points = torch.linspace(0.0, 1.0, steps + 1)
    weights = torch.full((steps + 1,), 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps
    return points, weights


def integrated_gradients(
    run: RunView,
    sinks: torch.Tensor,
    sink_weights: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
) -> IntegratedGradientsResult:
    """IG scores of every position with ``f(x)`` and ``f(x′)``, to check completeness against."""
    require_one_embedding_channel(run, "integrated-gradients")
    objective = objective_for(run, sinks, sink_weights)
    if objective is None:
        return IntegratedGradientsResult(torch.zeros(run.num_tokens), 0.0, 0.0, ("no sink can be predicted",))
    ids = torch.tensor(run.token_ids[: objective.length], dtype=torch.long)
    inputs = input_embeddings(run, ids)  # x: [T, D]
    baseline = input_embeddings(run, torch.full_like(ids, neutral_token_id(run)))  # x′: [T, D]
    difference = inputs.float() - baseline.float()  # [T, D]
    notes = objective.notes
    if not bool(baseline.any()):
        # A zero embedding (a pad row kept at 0) meets RMSNorm's rsqrt(eps) at the path's start.
        notes = (*notes, "the baseline (pad/EOS) embedding is all zeros; IG near it is ill-conditioned")
    points, weights = trapezoid(steps)
    batch = batch_size or auto_batch_size(run, ids.shape[0], objective.readout.shape[0], limit=steps + 1)
    integral = torch.zeros(difference.shape, dtype=torch.float32, device=difference.device)  # [T, D]
    deepstack_integral = torch.zeros(difference.shape[0], dtype=torch.float32, device=difference.device)  # [T]
    values = torch.zeros(steps + 1, dtype=torch.float32)  # f at every point
    for start in range(0, steps + 1, batch):
        part = slice(start, min(start + batch, steps + 1))
        alphas = points[part].to(difference.device)[:, None, None]  # [b, 1, 1]
        path = (baseline.float()[None] + alphas * difference[None]).to(inputs.dtype)  # [b, T, D]
        # the deepstack features (Qwen3-VL) scaled along with the embeddings; share: their part of df/da
        objective_values, gradients, share = path_gradients(run, objective, path, deepstack_scale=alphas[:, 0, 0])
        step_weights = weights[part].to(difference.device)
        integral += (step_weights[:, None, None] * gradients.float()).sum(0)
        deepstack_integral += (step_weights[:, None] * share).sum(0)
        values[part] = objective_values.float().cpu()
    per_position = (difference * integral).sum(-1) + deepstack_integral  # [T]
    return IntegratedGradientsResult(
        scores=scores_over_run(run, per_position),
        objective_input=float(values[-1]),
        objective_baseline=float(values[0]),
        notes=notes,
    )


@register_method
class IntegratedGradients(AttributionMethod):
    name = "integrated-gradients"
    description = "Integrated gradients from the pad/EOS-embedding baseline (trapezoid rule, batched), signed."
    cost: ClassVar[str] = "O(steps·(forward + backward))"
    signed: ClassVar[bool] = True  # scores can be negative

    def __init__(self, steps: int = DEFAULT_STEPS, batch_size: int | None = None) -> None:
        if isinstance(steps, bool) or not hasattr(steps, "__index__") or not 1 <= steps.__index__() <= MAX_STEPS:
            raise SpanTraceError(f"integrated-gradients needs steps in 1..{MAX_STEPS} (a whole number); got {steps!r}")
        steps = steps.__index__()  # a NumPy integer as a Python int
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SpanTraceError(f"batch_size must be a positive whole number or None (automatic); got {batch_size!r}")
        self.steps = steps
        self.batch_size = batch_size

    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        result = integrated_gradients(run, sinks, sink_weights, steps=self.steps, batch_size=self.batch_size)
        return SinkScores(scores=result.scores, notes=result.notes)
