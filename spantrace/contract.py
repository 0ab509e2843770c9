"""What attribution needs to know about one transformer architecture.

An adapter turns a Hugging Face causal LM into four things per decoder layer:

- hook points: the module whose input is the residual entering the block (``x_in``) and the
  module whose input is the residual after attention (``x_mid``);
- the attention inputs recomputed from ``x_in`` with the model's own modules: keys after projection,
  biases, k norm and rotary embedding ``[G, N, d]`` and values with the V bias ``[G, N, d]`` for the
  whole sequence, and queries ``[H, C, d]`` for just the C sinks a trace needs;
- the output projection split per head, ``[H, d, D]``, and its bias (kept with the residual);
- the score rules: scaling, logit soft-capping, sliding or chunked windows, per-head sink logits.

Queries and keys may have a different width from values (DeepSeek's MLA): ``keys [G, N, d]`` but
``values [G, N, d_v]`` and the output projection ``[H, d_v, D]``. A residual multiplier on the attention
branch (Granite) is folded into the output projection by the adapter.

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
    # A learned logit per head that joins every softmax denominator and has no value vector (gpt-oss):
    # rows then sum to less than one, and the missing mass simply contributes nothing. [H] float32.
    sink_logits: torch.Tensor | None = None
    # Chunked attention (Llama 4): sink i sees source j only inside its own block, i // chunk == j // chunk.
    attention_chunk: int | None = None
    # Bidirectional blocks (Gemma 3's images): ``(start, end)`` runs, end exclusive, inside which a sink also sees
    # the later positions of its own block (windows and chunks still apply). Set per run, from the capture.
    bidirectional_blocks: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class SandwichNorm:
    """An RMSNorm applied to the attention output before it joins the residual (Gemma, GLM-4, OLMo 2).

    ``x_mid_i = x_in_i + gain ⊙ a_i · s_i`` with ``s_i = 1 / sqrt(mean(a_i²) + eps)`` a scalar per
    sink. Since ``a_i = Σ_{h,j} α[h,i,j] v[h,j] (+ o bias)`` is linear in the value vectors, source j's
    contribution to sink i through head h is exactly ``α[h,i,j] · s_i · (gain ⊙ v[h,j])``. Folding
    ``s_i`` into the sink weights keeps span aggregation exact at O(M·N·H) cost.
    """

    module: nn.Module  # hook point: its input is the attention output a [N, D]
    gain: torch.Tensor  # [D]
    eps: float


class ArchitectureAdapter(Protocol):
    """The per-architecture knowledge spantrace needs; one implementation per family.

    Optional: ``key_value_layer(index) -> int`` names an earlier layer whose keys and values layer ``index``
    attends to (Gemma 4's KV sharing); ``keys_values`` is then called with that layer's index and ``x_in``.
    Without it every layer attends to its own.
    """

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


@dataclass(frozen=True)
class SpanPart:
    """One group of heads' share of a weighted sink set's update, in the form FlashTrace's kernel takes.

    ``Σ_i w_i part[h, i, j] = alpha_bar[h, j] · values[kv(h), j] @ out_weight[h]`` for every source j < W:
    softmax attention gives the summed rows ``alpha_bar [H, W]`` and its values ``[G, W, d]``; a layer
    whose mixing weight is per channel (a gate, a recurrence) folds it into ``values [H, W, d]`` and
    leaves ``alpha_bar`` None (all ones).
    """

    alpha_bar: torch.Tensor | None  # [H, W] float32, or None
    values: torch.Tensor  # [G, W, d]
    out_weight: torch.Tensor  # [H, d, D]


class MixingLayer(Protocol):
    """One layer's token mixing, split exactly over source positions (what FlashTrace and IFR read).

    For every sink i: ``x_mid_i = Σ_{h, j} part[h, i, j] + residual(i)``. Softmax attention
    (``spantrace.layers.softmax.LayerInputs``) is one implementation; the hybrids' gated attention, Gated
    DeltaNet and Mamba-2 layers are others (``spantrace.layers.split``). An adapter that has such layers
    implements ``layer_kind(index) -> str`` and, for every kind but "attention" (softmax attention, read
    through ``keys_values``/``queries``), ``mixing_layer(index, capture) -> MixingLayer``.
    """

    index: int
    kind: str  # "attention", "gated attention", "gated deltanet", "mamba2", "attention + mamba2"
    num_heads: int  # heads of token_parts' first axis
    x_in: torch.Tensor  # [N, D] float32
    x_mid: torch.Tensor  # [N, D] float32

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        """What each sink keeps that comes from no source: ``x_in`` and biases. [C, D] float32."""

    def span_parts(
        self, sinks: torch.Tensor, weights: torch.Tensor, width: int, chunk_size: int, workspace: object
    ) -> list[SpanPart]:
        """The weighted sink set's per-source update over sources ``0…width−1``, as SpanParts."""

    def token_parts(self, sinks: torch.Tensor, width: int, workspace: object = None) -> torch.Tensor:
        """Each sink's own per-head, per-source parts: ``[H, C, width, D]`` float32 (callers may overwrite it;
        an implementation may build it in ``workspace``, a ``spantrace.kernels.proximity.Workspace``)."""
