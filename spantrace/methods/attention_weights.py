"""Raw attention baselines: how much the span's tokens attend to each position.

``attention-last``: the last layer's attention probabilities, mean over heads, summed over the sink rows
(weighted by the sink weights): ``s(j) = Σ_i w_i · mean_h α[L−1, h, i, j]``.
``attention-mean``: the same per layer, then the mean over layers.

The rows are recomputed from the captured residual (never ``output_attentions``), a chunk of sinks at
a time, so memory stays O(chunk · N · H).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from ..attention import layer_inputs
from .base import AttributionMethod, SinkScores
from .registry import register_method

if TYPE_CHECKING:
    from ..api import Run


def sink_attention(
    run: Run, index: int, sinks: torch.Tensor, sink_weights: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``Σ_i w_i · mean_h α[index, h, i, :]``: layer ``index``'s head-averaged attention of the sinks. [N] float32."""
    layer = layer_inputs(run.adapter, run.capture, index, run.key_value_cache)
    width = int(sinks.max()) + 1  # later sources get nothing
    scores = torch.zeros(run.num_tokens, dtype=torch.float32)
    scores[:width] = layer.summed_rows(sinks, sink_weights, width, chunk_size).mean(0).cpu()  # mean over heads
    return scores


@register_method
class AttentionLast(AttributionMethod):
    name = "attention-last"
    description = "Last layer's attention probabilities, mean over heads, summed over the span's rows."
    cost: ClassVar[str] = "O(M·N·H) (one layer)"

    @torch.inference_mode()
    def score(self, run: Run, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        last = run.capture.num_layers - 1
        return SinkScores(scores=sink_attention(run, last, sinks, sink_weights, chunk_size))


@register_method
class AttentionMean(AttributionMethod):
    name = "attention-mean"
    description = "Attention probabilities, mean over heads and over layers, summed over the span's rows."
    cost: ClassVar[str] = "O(M·N·H) per layer"

    @torch.inference_mode()
    def score(self, run: Run, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        num_layers = run.capture.num_layers
        total = sum(sink_attention(run, index, sinks, sink_weights, chunk_size) for index in range(num_layers))
        return SinkScores(scores=total / num_layers)
