"""Token-wise Information Flow Routes: one exact row per sink token, the span score their mean.

``e[l, j → i] = Σ_h prox(α[h,i,j] v[h,j], x_mid_i) / (Σ_{j',h} prox(...) + prox(x_in_i, x_mid_i))``,
``row_i(j) = Σ_l e[l, j → i]``. Cost per layer O(M·N·H·D): the baseline FlashTrace avoids.
With hop weights the span score is the weighted mean ``Σ_i w_i row_i / Σ_i w_i``.
"""

from __future__ import annotations

import torch

from ..kernels.proximity import DEFAULT_BLOCK_ELEMENTS, Workspace, part_edges
from ..kernels.rows import sink_chunks
from ..layers.dispatch import iter_layers
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .registry import register_method


@register_method
class TokenwiseIFR(AttributionMethod):
    name = "ifr"
    description = "Token-wise Information Flow Routes: one exact row per sink, averaged (slow baseline)."
    cost = "O(M·N·H·D) per layer"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        keep = sink_weights > 0  # zero-weight sinks cannot change the mean
        sinks, sink_weights = sinks[keep], sink_weights[keep].float()
        width = int(sinks.max()) + 1
        rows = torch.zeros(sinks.shape[0], run.num_tokens, dtype=torch.float32)  # [M, N]
        workspace = Workspace()
        for layer in iter_layers(run.adapter, run.capture, run.key_value_cache):
            device = layer.x_mid.device
            positions = sinks.to(device)
            # Bound the [H, C, width, D] parts as well as the user's chunk size.
            memory_chunk = max(1, DEFAULT_BLOCK_ELEMENTS // (layer.num_heads * width * layer.x_mid.shape[-1]))
            for part, chunk in sink_chunks(positions, min(chunk_size, memory_chunk)):
                parts = layer.token_parts(chunk, width, workspace)  # [H, C, width, D]
                edges = part_edges(parts, layer.x_mid[chunk], layer.residual(chunk), workspace=workspace)
                rows[part, :width] += edges.cpu()
        scores = (sink_weights[:, None] * rows).sum(0) / sink_weights.sum()
        return SinkScores(scores=scores, rows=rows, row_positions=sinks)
