"""FlashTrace: IFR of an aggregated sink set, exact, in one pass over the layers.

For sinks S with weights w: ``Y_S = Σ w_i x_mid_i``, ``R_S = Σ w_i x_in_i``,
``ᾱ[h, j] = Σ_i w_i α[h, i, j]``; since ``v[h, j]`` does not depend on i, ``ᾱ[h, j] · v[h, j]`` is the
exact aggregated contribution. Cost per layer: O(M·N·H) for the rows plus O(N·H·D) vector work.
Layers that are not softmax attention (a hybrid's gated attention, Gated DeltaNet, Mamba-2) give their
aggregate per channel instead (``MixingLayer.span_parts``, docs/hybrids.md); the kernel is the same.
"""

from __future__ import annotations

import torch

from ..kernels.proximity import Workspace, normalised_edges, span_proximities
from ..layers.dispatch import iter_layers
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .registry import register_method


@register_method
class FlashTrace(AttributionMethod):
    name = "flashtrace"
    description = "Span-aggregated Information Flow Routes in one pass (FlashTrace), with recursive hops."
    cost = "O(M·N·H + N·H·D) per layer, one pass"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        width = int(sinks.max()) + 1  # sources after the last sink receive nothing
        scores = torch.zeros(run.num_tokens, dtype=torch.float32)
        notes: list[str] = []
        workspace = Workspace()
        for layer in iter_layers(run.adapter, run.capture, run.key_value_cache):
            device = layer.x_mid.device
            weights = sink_weights.to(device=device, dtype=torch.float32)  # [M]
            positions = sinks.to(device)
            target = weights @ layer.x_mid[positions]  # Y_S: [D]
            residual = weights @ layer.residual(positions)  # R_S: [D]
            parts = layer.span_parts(positions, weights, width, chunk_size, workspace)
            per_source = sum(
                span_proximities(part.alpha_bar, part.values, part.out_weight, target, workspace=workspace)
                for part in parts
            )
            edges, denominator = normalised_edges(per_source, target, residual)
            if denominator == 0.0:
                notes.append(f"layer {layer.index}: zero proximity mass, edges set to 0")
            scores[:width] += edges.cpu()
        return SinkScores(scores=scores, notes=tuple(notes))
