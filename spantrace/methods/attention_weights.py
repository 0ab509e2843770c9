"""Raw attention baselines: how much the span's tokens attend to each position.

``attention-last``: the last layer's attention probabilities, mean over heads, summed over the sink rows
(weighted by the sink weights): ``s(j) = Σ_i w_i · mean_h α[L−1, h, i, j]``.
``attention-mean``: the same per layer, then the mean over layers.

The rows are recomputed from the captured residual (never ``output_attentions``), a chunk of sinks at
a time, so memory stays O(chunk · N · H). In a hybrid model only the softmax-attention layers have rows:
``attention-last`` reads the last of them and ``attention-mean`` averages over them, and the result's
notes say which layers were left out (a Gated DeltaNet or Mamba-2 layer has no attention probabilities).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import UnsupportedArchitectureError
from ..layers.dispatch import layer_kind, mixing_layer
from ..offload import materialized
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .registry import register_method


def sink_attention(
    run: RunView, index: int, sinks: torch.Tensor, sink_weights: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``Σ_i w_i · mean_h α[index, h, i, :]``: layer ``index``'s head-averaged attention of the sinks. [N] float32."""
    width = int(sinks.max()) + 1  # later sources get nothing
    scores = torch.zeros(run.num_tokens, dtype=torch.float32)
    with materialized(run.adapter.layer(index)):  # its weights, if accelerate offloaded them
        layer = mixing_layer(run.adapter, run.capture, index, run.key_value_cache)
        scores[:width] = layer.summed_rows(sinks, sink_weights, width, chunk_size).mean(0).cpu()  # mean over heads
    return scores


# Layer kinds whose token mixing is (or holds) a softmax over sources: a gate after it does not change the
# rows, and Falcon-H1's parallel layer offers the rows of its attention half.
ROW_KINDS = frozenset({"attention", "gated attention", "attention + mamba2"})


def attention_layers(run: RunView) -> tuple[list[int], list[str]]:
    """The layers with softmax attention rows, and a note for each layer without (a hybrid's recurrent ones)."""
    kept, notes = [], []
    for index in range(run.capture.num_layers):
        kind = layer_kind(run.adapter, index)
        if kind in ROW_KINDS:
            kept.append(index)
        else:
            notes.append(f"layer {index} ({kind}) has no attention probabilities; left out")
    if not kept:
        raise UnsupportedArchitectureError(
            "this model has no softmax-attention layer, so attention-reading methods have nothing to read; "
            "use 'flashtrace', 'ifr' or a gradient method"
        )
    return kept, notes


@register_method
class AttentionLast(AttributionMethod):
    name = "attention-last"
    description = "Last layer's attention probabilities, mean over heads, summed over the span's rows."
    cost: ClassVar[str] = "O(M·N·H) (one layer)"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        layers, _ = attention_layers(run)
        last = layers[-1]
        notes = () if last == run.capture.num_layers - 1 else (f"the last attention layer is layer {last}",)
        return SinkScores(scores=sink_attention(run, last, sinks, sink_weights, chunk_size), notes=notes)


@register_method
class AttentionMean(AttributionMethod):
    name = "attention-mean"
    description = "Attention probabilities, mean over heads and over layers, summed over the span's rows."
    cost: ClassVar[str] = "O(M·N·H) per layer"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        layers, notes = attention_layers(run)
        total = sum(sink_attention(run, index, sinks, sink_weights, chunk_size) for index in layers)
        return SinkScores(scores=total / len(layers), notes=tuple(notes))
