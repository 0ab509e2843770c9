"""What attribution needs to know about one transformer architecture.

An adapter turns a Hugging Face causal LM into four things per decoder layer:

- hook points: the module whose input is the residual entering the block (``x_in``) and the
  module whose input is the residual after attention (``x_mid``);
- the attention inputs recomputed from ``x_in`` with the model's own modules: keys after projection,
  biases, k norm and rotary embedding ``[G, N, d]`` and values with the V bias ``[G, N, d]`` for the
  whole sequence, and queries ``[H, C, d]`` for just the C sinks a trace needs;
- the output projection split per head, ``[H, d, D]``, and its bias (kept with the residual);
- the score rules: scaling, logit soft-capping, sliding window.

Architectures with a norm after attention ("sandwich", Gemma 2/3) also say how to read the per-sink
scale of that norm (see ``SandwichNorm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionRule:
    """How one layer turns query-key products into probabilities."""

    num_heads: int  # H query heads
    num_kv_heads: int  # G key/value heads; query head h reads kv head h // (H // G)
    head_dim: int  # d
    scaling: float  # multiplies q·k
    softcap: float | None  # logits -> softcap * tanh(logits / softcap)
    sliding_window: int | None  # sink i sees source j iff i - window < j <= i
    # A learned per-head logit [H] that joins every softmax denominator without a value (gpt-oss): rows sum to < 1.
    sink_logits: torch.Tensor | None = None
    attention_chunk: int | None = None  # sink i sees source j only if i // chunk == j // chunk (Llama 4)


@dataclass(frozen=True)
class SandwichNorm:
    """An RMSNorm applied to the attention output before it joins the residual.

    ``x_mid_i = x_in_i + gain ⊙ a_i · s_i`` with ``s_i = 1 / sqrt(mean(a_i²) + eps)`` a scalar per
    sink. Since ``a_i = Σ_{h,j} α[h,i,j] v[h,j] (+ o bias)`` is linear in the value vectors, source j's
    contribution to sink i through head h is exactly ``α[h,i,j] · s_i · (gain ⊙ v[h,j])``. Folding
    ``s_i`` into the sink weights keeps span aggregation exact at O(M·N·H) cost.
    """

    module: nn.Module  # hook point: its input is the attention output a [N, D]
    gain: torch.Tensor  # [D]
    eps: float


class ArchitectureAdapter(Protocol):
    """The per-architecture knowledge spantrace needs; one implementation per family."""

    name: str

    def base_model(self) -> nn.Module:
        """The decoder stack without the LM head (so capture never computes [N, V] logits)."""

    def num_layers(self) -> int: ...

    def layer(self, index: int) -> nn.Module:
        """Decoder layer ``index``; its input is ``x_in``."""

    def mid_hook_module(self, index: int) -> nn.Module:
        """The module whose input is the residual after attention, ``x_mid``."""

    def sandwich_norm(self, index: int) -> SandwichNorm | None: ...

    def attention_rule(self, index: int) -> AttentionRule: ...

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_in [N, D]`` -> keys ``[G, N, d]`` as the model multiplies them (norms, biases, rotary
        applied) and values ``[G, N, d]`` with the V bias."""

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """Queries ``[H, C, d]`` of the C rows ``x_rows [C, D]`` at ``positions [C]`` of a sequence of
        ``length`` tokens (norms, biases and rotary applied)."""

    def output_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-head output weights ``[H, d, D]`` and the output bias ``[D]`` (or None)."""
