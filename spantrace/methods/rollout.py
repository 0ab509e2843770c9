"""Attention rollout with the residual (Abnar & Zuidema 2020).

Per layer l, ``Ã_l = normalise_rows(0.5 · mean_h α_l + 0.5 · I)``; the rollout is the product
``Ã_{L−1} ··· Ã_0`` and the span's score is the weighted sum of its sink rows of that product,
``s = (Σ_i w_i e_i)ᵀ Ã_{L−1} ··· Ã_0``.

We never form the N × N product: the sink vector is carried backwards from the last layer to the
first, ``v ← vᵀ Ã_l``, with the rows of ``Ã_l`` computed only for the positions that hold mass, a
chunk at a time, so memory stays O(chunk · N · H). Every ``Ã_l`` is row-stochastic, so the scores sum
to ``Σ_i w_i``. In a hybrid model the layers without attention probabilities (Gated DeltaNet, Mamba-2)
are left out of the product, i.e. taken as the identity, and the notes name them.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..kernels.rows import sink_chunks
from ..layers.dispatch import mixing_layer
from ..offload import materialized
from ..protocols import RunView
from .attention_weights import attention_layers
from .base import AttributionMethod, SinkScores
from .registry import register_method


def rollout_rows(attention: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Rows of ``normalise_rows(0.5 · mean_h α + 0.5 · I)`` for ``sinks``.

    attention: [H, C, width] rows of the C sinks; sinks: [C] positions -> [C, width] float32.
    """
    mixed = 0.5 * attention.float().mean(0)  # [C, width]
    mixed[torch.arange(sinks.shape[0], device=mixed.device), sinks] += 0.5
    return mixed / mixed.sum(-1, keepdim=True)


@register_method
class Rollout(AttributionMethod):
    name = "rollout"
    description = "Attention rollout with the residual (Abnar & Zuidema 2020): product of 0.5·A + 0.5·I over layers."
    cost: ClassVar[str] = "O(N²·H) per layer"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        width = int(sinks.max()) + 1  # no mass ever reaches later positions
        mass = torch.zeros(width, dtype=torch.float32)  # v: [width]
        mass.index_add_(0, sinks, sink_weights.float())
        layers, notes = attention_layers(run)
        for index in reversed(layers):
            with materialized(run.adapter.layer(index)):  # its weights, if accelerate offloaded them
                layer = mixing_layer(run.adapter, run.capture, index, run.key_value_cache)
                device = layer.x_in.device
                current = mass.to(device)
                holding = torch.nonzero(current).flatten()  # only rows with mass matter
                carried = torch.zeros(width, dtype=torch.float32, device=device)
                for _, chunk in sink_chunks(holding, chunk_size):
                    rows = rollout_rows(layer.rows(chunk, width), chunk)
                    carried += current[chunk] @ rows  # [width]
            mass = carried.cpu()
        scores = torch.zeros(run.num_tokens, dtype=torch.float32)
        scores[:width] = mass
        return SinkScores(scores=scores, notes=tuple(notes))
