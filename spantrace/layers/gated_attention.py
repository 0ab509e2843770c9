"""Gated full attention (Qwen3-Next, Qwen3.5, Qwen3.5-MoE): an exact per-source split.

The full-attention layers of these hybrids are softmax attention with three twists:

- ``q_proj`` emits, per head, the query and a gate of the same width: ``[q_h ‖ gate_h]`` (``2d`` columns
  per head). The head output is multiplied channel by channel by ``σ(gate_ih)`` of the *sink* before
  ``o_proj``;
- zero-centred RMSNorms on q and k (``(1 + w)`` gains), applied per head before the rotary embedding;
- partial rotary (the first ``partial_rotary_factor · d`` channels, 0.25 by default). Qwen3.5's rotary
  module is multimodal (interleaved T/H/W sections); for text the three position rows are the same
  and the tables reduce to ordinary 1-D positions, which is what ``rotary_tables`` feeds it.

Decomposition. With ``a_hi = Σ_j α_hij v_{g(h)j}`` (softmax rows α recomputed from the model's own
projections, norms and rotary; the V bias inside ``v``):

    out_i = Σ_h (σ(gate_ih) ⊙ a_hi) W_O^h + b_O
          = Σ_{h, j≤i} (σ(gate_ih) ⊙ α_hij v_{g(h)j}) W_O^h + b_O.

The gate depends on the sink only, so it is frozen like α (the spantrace convention for context
quantities) and ``part[h, i, j] = (σ(gate_ih) ⊙ α_hij v_j) W_O^h`` is exact; ``b_O`` stays with the
residual. For a weighted sink set (weights ``w_i``) the per-channel gate does not factor out of the
sum over sinks, but it does factor per source:

    Σ_i w_i part[h, i, j] = ((Σ_i w_i α_hij σ(gate_ih)) ⊙ v_j) W_O^h = effective_values[h, j] W_O^h,

one ``[S, C] × [C, d]`` matmul per head and block of C sinks over the S sources they see (the causal
tiling of ``spantrace.kernels.rows.weighted_row_sum``): O(M·N·H·d) for M sinks, memory
O(C·N·H). ``effective_values`` with ``alpha_bar = ones`` is exactly what
``spantrace.kernels.proximity.span_edges`` takes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from ..contract import AttentionRule
from ..errors import UnsupportedArchitectureError
from ..kernels.proximity import Workspace
from ..kernels.rows import attention_rows, weighted_row_sum
from .softmax import weighted_sinks


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for a float64 model, float32 for everything else (float32 accumulation whatever the dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotary_tables(rotary: nn.Module, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[1, length, d_rot]`` for text positions 0…length−1 from the model's own rotary module.

    Qwen3.5's text rotary is multimodal (``mrope_section``) and takes position ids ``[3, batch, N]``; for
    text all three rows are the token positions. Prompts with images need the model's own 3-D positions:
    pass its tables to ``GatedAttentionLayer`` instead.
    """
    positions = torch.arange(length, device=like.device)[None]  # [1, N]
    if hasattr(rotary, "mrope_section"):
        positions = positions[None].expand(3, 1, length)  # [3, 1, N]
    return rotary(like.new_zeros(1, length, like.shape[-1]), positions)


class GatedAttentionLayer:
    """One gated full-attention layer, split exactly over heads and source tokens.

    ``layer`` is the decoder layer (``input_layernorm`` and ``self_attn``), ``x_in [N, D]`` the residual
    entering it, ``cos``/``sin`` the rotary tables ``[1, N, d_rot]`` of its positions (see
    ``rotary_tables``).
    """

    def __init__(
        self,
        layer: nn.Module,
        x_in: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        chunk_size: int = 256,
    ) -> None:
        attention = getattr(layer, "self_attn", None)
        if attention is None or not all(hasattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise UnsupportedArchitectureError("gated attention: the layer has no self_attn with q/k/v/o projections")
        config = attention.config
        self.num_heads = int(config.num_attention_heads)  # H
        self.num_kv_heads = int(config.num_key_value_heads)  # G
        self.head_dim = int(attention.head_dim)  # d
        if attention.q_proj.out_features != 2 * self.num_heads * self.head_dim:
            raise UnsupportedArchitectureError(
                f"gated attention: q_proj has {attention.q_proj.out_features} outputs, expected 2·H·d = "
                f"{2 * self.num_heads * self.head_dim} (a query and a gate per head); this is not a gated layer"
            )
        rotate = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
        if rotate is None:
            raise UnsupportedArchitectureError("gated attention: the modeling module has no apply_rotary_pos_emb")
        self.layer = layer
        self.attention = attention
        self._rotate: Callable = rotate
        parameter = attention.q_proj.weight
        self.model_dtype = parameter.dtype
        self.dtype = compute_dtype(parameter.dtype)
        self.model_x_in = x_in.detach().to(device=parameter.device, dtype=parameter.dtype)  # [N, D]
        self.x_in = self.model_x_in.to(self.dtype)  # [N, D]
        self.length = int(x_in.shape[0])  # N
        self.cos, self.sin = cos.to(parameter.device), sin.to(parameter.device)  # [1, N, d_rot]
        self.chunk_size = chunk_size
        self.rule = AttentionRule(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            scaling=float(attention.scaling),
            softcap=None,
            sliding_window=None,
        )
        with torch.inference_mode():
            hidden = layer.input_layernorm(self.model_x_in)  # [N, D]
            self._hidden = hidden
            n, g, d = self.length, self.num_kv_heads, self.head_dim
            keys = attention.k_norm(attention.k_proj(hidden).view(n, g, d)).transpose(0, 1)  # [G, N, d]
            dummy = keys.new_zeros(1, 1, n, d)
            _, keys = self._rotate(dummy, keys[None], self.cos, self.sin)
            self.keys = keys[0]  # [G, N, d]
            self.values = attention.v_proj(hidden).view(n, g, d).transpose(0, 1).to(self.dtype)  # [G, N, d]
        o_proj = attention.o_proj
        weight = o_proj.weight.detach().to(self.dtype)  # [D, H·d]
        self.out_weight = weight.T.reshape(self.num_heads, self.head_dim, weight.shape[0])  # [H, d, D]
        self.out_bias = None if o_proj.bias is None else o_proj.bias.detach().to(self.dtype)  # [D]

    # recomputed quantities -----------------------------------------------------------------------
    @torch.inference_mode()
    def queries_gates(self, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``[H, C, d]`` (q norm and rotary applied) and gates ``σ(gate) [H, C, d]`` of the sinks."""
        sinks = sinks.to(self.model_x_in.device)
        c, h, d = sinks.shape[0], self.num_heads, self.head_dim
        projected = self.attention.q_proj(self._hidden[sinks]).view(c, h, 2 * d)  # [C, H, 2d]
        queries, gates = projected[..., :d], projected[..., d:]  # [C, H, d] each
        queries = self.attention.q_norm(queries).transpose(0, 1)  # [H, C, d]
        queries, _ = self._rotate(queries[None], queries[None], self.cos[:, sinks], self.sin[:, sinks])
        return queries[0], torch.sigmoid(gates.to(self.dtype)).transpose(0, 1)  # [H, C, d] each

    def rows(self, sinks: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Attention probabilities ``α [H, C, width]`` of the sinks (float32, as spantrace computes rows)."""
        queries, _ = self.queries_gates(sinks)
        width = self.length if width is None else width
        return attention_rows(queries, self.keys, sinks, self.rule, width, queries_selected=True)

    # the decomposition ---------------------------------------------------------------------------
    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        """What stays with the residual: ``x_in_i + b_O`` for each sink. [C, D]."""
        residual = self.x_in[sinks.to(self.x_in.device)]
        return residual + self.out_bias if self.out_bias is not None else residual

    @torch.inference_mode()
    def summed_rows(
        self,
        sinks: torch.Tensor,
        weights: torch.Tensor,
        width: int,
        chunk_size: int | None = None,
        workspace: Workspace | None = None,
        *,
        gated: bool = False,
    ) -> torch.Tensor:
        """``Σ_i w_i α_hij`` over the sinks, ``[H, width]`` float32; with ``gated`` the gate kept per channel,
        ``Σ_i w_i α_hij σ(gate_ih)``, ``[H, width, d]`` (``weighted_row_sum``: a block of sinks at a time over
        the sources they see)."""
        sinks, weights = weighted_sinks(sinks, weights, self.x_in.device)
        queries, gates = self.queries_gates(sinks)  # [H, M, d] each
        return weighted_row_sum(
            queries,
            self.keys,
            sinks,
            weights,
            self.rule,
            width,
            max_sinks=chunk_size or self.chunk_size,
            workspace=workspace,
            channel_weights=gates if gated else None,
        )

    def span_values(self, sinks: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``effective_values [H, N, d]`` and ``out_weight [H, d, D]`` with
        ``effective_values[h, j] @ out_weight[h] = Σ_i w_i part[h, i, j]``: the rows summed with the gates as
        per-channel weights."""
        coefficients = self.summed_rows(sinks, weights, self.length, gated=True).to(self.dtype)  # [H, N, d]
        values = self.values.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)  # [H, N, d]
        return coefficients * values, self.out_weight

    @torch.inference_mode()
    def token_values(self, sinks: torch.Tensor) -> torch.Tensor:
        """Each sink's own effective values ``σ(gate_ih) ⊙ α_hij v_j``: ``[H, C, N, d]`` (``@ out_weight`` gives
        its parts)."""
        queries, gates = self.queries_gates(sinks)  # [H, C, d] each
        rows = attention_rows(queries, self.keys, sinks, self.rule, self.length, queries_selected=True)  # [H, C, N]
        values = self.values.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)  # [H, N, d]
        return rows.to(self.dtype)[..., None] * gates[:, :, None, :] * values[:, None]

    def token_parts(self, sink: int) -> torch.Tensor:
        """Per-head, per-source parts of one sink's attention update: ``[H, N, D]``."""
        values = self.token_values(torch.tensor([int(sink)], device=self.x_in.device))[:, 0]  # [H, N, d]
        return torch.bmm(values, self.out_weight)  # [H, N, D]
