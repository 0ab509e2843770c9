"""DeepSeek-V3 / R1 and Kimi K2: Multi-head Latent Attention (MLA), ``model_type`` ``deepseek_v3``.

The decoder is laid out like Llama's (``model.model.layers[i]`` with ``input_layernorm``,
``self_attn`` and ``post_attention_layernorm``, one rotary table on ``model.model.rotary_emb``); only the
attention module differs, and each difference is recomputed with the model's own modules:

- Queries: ``q_b_proj(q_a_layernorm(q_a_proj(x)))`` (a low-rank query with its own RMSNorm), or a plain
  ``q_proj(x)`` when ``q_lora_rank`` is None; per head the first ``qk_nope_head_dim`` entries carry no
  position, the last ``qk_rope_head_dim`` entries are rotated.
- Keys and values come from a per-token latent: ``kv_a_proj_with_mqa(x) = [c ‖ k_pe]``;
  ``kv_b_proj(kv_a_layernorm(c))`` gives every head's ``k_nope`` and value (``v_head_dim`` wide), and
  ``k_pe`` is one rotated key slice shared by all heads, appended to each head's ``k_nope``. Everything
  is a function of the source token alone, so keys ``[H, N, qk_nope + qk_rope]`` and values
  ``[H, N, v_head_dim]`` are exact per position. There is no key/value sharing between query heads
  (G = H), and the value width differs from the query/key width (the output projection is
  ``[H, v_head_dim, D]``).
- The rotation is interleaved (pairs ``(x0, x1), (x2, x3)…``) when ``config.rope_interleave`` is set
  (the checkpoints' default) and rotate-half otherwise; the modeling module's own function is used for
  either, with the cos/sin tables of ``model.model.rotary_emb`` (YaRN's attention factor is in them).
- The softmax scale ``qk_head_dim ** -0.5`` is multiplied by YaRN's ``mscale(factor, mscale_all_dim)²``
  when the rope scaling asks for it; it is read from the module's ``scaling``, which already holds it.
- The MLP is a mixture of experts after ``first_k_dense_replace`` dense layers: it is outside the
  attention identity and needs nothing here.

Refused at load: a module whose own attention would repeat the already per-head keys (``num_key_value_heads``
different from ``num_attention_heads``), and quantised (FP8 block-scaled) output projections, whose raw
weights are not the matrix the model multiplies. Kimi K2 checkpoints name themselves ``kimi_k2``; they run
natively (and are traced) once their ``config.json`` says ``deepseek_v3``, as Moonshot's deployment guide
suggests for frameworks without a ``kimi_k2`` entry. Remote-code (``trust_remote_code``) DeepSeek modules
lay attention out differently and are not supported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule
from ..errors import UnsupportedArchitectureError
from .llama import LlamaStyleAdapter, require
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_ATTENTION_PARTS = ("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")


class DeepseekV3Adapter(LlamaStyleAdapter):
    """Adapter for Multi-head Latent Attention decoders (``DeepseekV3ForCausalLM``).

    The stack and its hook points are the Llama-style ones; queries, keys, values, the rule and the output
    projection are MLA's own.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        # Not LlamaStyleAdapter.__init__: that one requires the q_proj/k_proj that MLA replaces.
        stack = self._locate_stack(model)
        modeling = None
        for index, layer in enumerate(self._layers):
            where = f"{stack}.layers[{index}]"
            require(layer, "input_layernorm", self.name, where)
            require(layer, "post_attention_layernorm", self.name, where)
            attention = require(layer, "self_attn", self.name, where)
            for part in _ATTENTION_PARTS:
                require(attention, part, self.name, f"{where}.self_attn")
            self._check_attention(attention, index)
            modeling = sys.modules[type(attention).__module__]
        self._rotate: Callable = require(
            modeling, "apply_rotary_pos_emb_interleave" if self.config.rope_interleave else "apply_rotary_pos_emb",
            self.name, "modeling module",
        )

    def _check_attention(self, attention: nn.Module, index: int) -> None:
        """Refuse what the recomputation cannot reproduce exactly, with the reason."""
        groups = getattr(attention, "num_key_value_groups", 1)
        if groups != 1:
            raise UnsupportedArchitectureError(
                f"{self.name}: layer {index} repeats its per-head latent keys {groups} times "
                f"(num_key_value_heads={self.config.num_key_value_heads} ≠ num_attention_heads="
                f"{self.config.num_attention_heads}); set num_key_value_heads to num_attention_heads."
            )
        o_proj = attention.o_proj
        if hasattr(o_proj, "weight_scale_inv") or hasattr(o_proj, "weight_scale") or o_proj.weight.element_size() < 2:
            raise UnsupportedArchitectureError(
                f"{self.name}: layer {index}'s output projection is quantised ({type(o_proj).__name__}); "
                "load the checkpoint dequantised (e.g. quantization_config=FineGrainedFP8Config(dequantize=True))."
            )

    # attention -----------------------------------------------------------------------------------
    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        heads = attention.num_heads
        return AttentionRule(
            num_heads=heads,
            num_kv_heads=heads,  # keys and values are per head (expanded from the latent), no sharing
            head_dim=attention.qk_head_dim,  # qk_nope + qk_rope; values are v_head_dim wide
            scaling=float(attention.scaling),  # qk_head_dim^-0.5 · YaRN mscale² already folded in
            softcap=None,
            sliding_window=None,
        )

    def _shared_rotary_tables(self, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [1, length, qk_rope] for positions 0…length−1, in ``like``'s dtype and device."""
        key = (length, like.device, like.dtype)
        if key not in self._cos_sin:
            positions = torch.arange(length, device=like.device)[None]  # [1, N]
            if len(self._cos_sin) > 8:
                self._cos_sin.clear()
            self._cos_sin[key] = self._rotary(like.new_zeros(1, length, 1), positions)
        return self._cos_sin[key]

    def _rotated(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x [heads, C, qk_rope]`` rotated with ``cos``/``sin [1, C, qk_rope]`` as the model does."""
        rotated, _ = self._rotate(x[None], x[None], cos, sin)  # the model rotates [B, heads, C, r]
        return rotated[0]

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self._attention(index)
        heads, nope, rope, width_v = (
            attention.num_heads, attention.qk_nope_head_dim, attention.qk_rope_head_dim, attention.v_head_dim
        )
        hidden = self._layers[index].input_layernorm(x_in)  # [N, D]
        n = hidden.shape[0]
        latent, k_pe = torch.split(attention.kv_a_proj_with_mqa(hidden), [attention.kv_lora_rank, rope], dim=-1)
        expanded = attention.kv_b_proj(attention.kv_a_layernorm(latent))  # [N, H·(nope + d_v)]
        expanded = expanded.view(n, heads, nope + width_v).transpose(0, 1)  # [H, N, nope + d_v]
        k_nope, values = torch.split(expanded, [nope, width_v], dim=-1)  # [H, N, nope], [H, N, d_v]
        cos, sin = self._shared_rotary_tables(hidden, n)
        k_pe = self._rotated(k_pe[None], cos, sin)  # one shared slice: [1, N, rope]
        keys = torch.cat((k_nope, k_pe.expand(heads, -1, -1)), dim=-1)  # [H, N, nope + rope]
        return keys, values.contiguous()

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        attention = self._attention(index)
        hidden = self._layers[index].input_layernorm(x_rows)  # [C, D]
        c = hidden.shape[0]
        if attention.q_lora_rank is None:
            queries = attention.q_proj(hidden)
        else:
            queries = attention.q_b_proj(attention.q_a_layernorm(attention.q_a_proj(hidden)))
        queries = queries.view(c, attention.num_heads, attention.qk_head_dim).transpose(0, 1)  # [H, C, d]
        q_nope, q_pe = torch.split(queries, [attention.qk_nope_head_dim, attention.qk_rope_head_dim], dim=-1)
        cos, sin = self._shared_rotary_tables(hidden, length)
        positions = positions.to(cos.device)
        q_pe = self._rotated(q_pe, cos[:, positions], sin[:, positions])  # [H, C, rope]
        return torch.cat((q_nope, q_pe), dim=-1)  # [H, C, nope + rope]

    def output_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self._attention(index)
        weight = attention.o_proj.weight.detach()  # [D, H·d_v]
        per_head = weight.T.reshape(attention.num_heads, attention.v_head_dim, weight.shape[0])  # [H, d_v, D]
        bias = attention.o_proj.bias
        return per_head, bias.detach() if bias is not None else None


register_adapter("deepseek_v3", DeepseekV3Adapter)
