"""Llama 4 (``llama4_text``, and the image-text wrapper ``llama4``): Scout and Maverick.

The decoder is laid out like Llama's (``layers[i].self_attn`` with q/k/v/o projections, an RMSNorm
before attention and one before the MLP, no norm on the attention output), so the hook points, the
output projection and the per-head split are the Llama-style adapter's. What differs, and how each
detail is reproduced exactly:

- Complex rotary embedding. The rotary module returns ``freqs_cis`` (complex ``[1, N, d/2]``) instead
  of cos/sin, and ``apply_rotary_emb`` rotates interleaved pairs by complex multiplication in float32.
  We call the model's own rotary module for positions ``0…N−1`` (as its forward does) and the model's
  own ``apply_rotary_emb``, on queries and keys in the model's ``[B, N, heads, d]`` layout.
- Layers without rotary (``no_rope_layers``, read from each attention module's ``use_rope``): nothing
  is rotated there.
- L2 q/k norm (``use_qk_norm``; a weightless RMS norm, ``qk_norm``) on rotary layers only, applied
  *after* the rotation. We call the module itself, in the same order.
- Attention temperature tuning (``attn_temperature_tuning``) on layers without rotary: queries are
  multiplied by ``1 + attn_scale · log(1 + ⌊(pos + 1) / floor_scale⌋)``. It depends only on the sink's
  own position, so recomputing queries at given positions reproduces it exactly (same float32
  arithmetic, cast back to the model's dtype as the model does).
- Chunked attention on the layers whose ``config.layer_types`` entry is ``"chunked_attention"`` (by
  default the rotary layers): transformers' mask is causal AND ``i // chunk == j // chunk`` (there is
  no left padding in a trace), which is ``AttentionRule.attention_chunk``.
- Mixture-of-experts MLP: after ``x_mid``, so it plays no part in attention attribution.

``AutoModelForCausalLM`` on a Llama 4 checkpoint gives ``Llama4ForCausalLM`` (``llama4_text``, stack at
``model.model``); ``AutoModelForImageTextToText`` gives ``Llama4ForConditionalGeneration`` (``llama4``),
whose text stack is at ``model.language_model.model``. Traces run on text only.
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

_LAYER_TYPES = frozenset({"full_attention", "chunked_attention"})


class Llama4Adapter(LlamaStyleAdapter):
    """Adapter for ``Llama4ForCausalLM`` and ``Llama4ForConditionalGeneration`` (text stack only)."""

    def __init__(self, model: PreTrainedModel) -> None:
        # The Llama-style constructor expects ``model.model`` and ``apply_rotary_pos_emb``; Llama 4's
        # wrapper holds a whole causal LM at ``language_model`` and rotates with ``apply_rotary_emb``.
        self.model = model
        self.name = getattr(model.config, "model_type", type(model).__name__)
        self.config = model.config.get_text_config()
        self.text_type = getattr(self.config, "model_type", self.name)
        causal, where = model, "model"
        if hasattr(model, "language_model") and not hasattr(model, "model"):
            causal, where = model.language_model, "model.language_model"
        self._base = require(causal, "model", self.name, where)
        where = f"{where}.model"
        self._layers = require(self._base, "layers", self.name, where)
        self._rotary = require(self._base, "rotary_emb", self.name, where)
        first = require(self._layers[0], "self_attn", self.name, f"{where}.layers[0]")
        for part in ("q_proj", "k_proj", "v_proj", "o_proj", "use_rope", "attn_temperature_tuning"):
            require(first, part, self.name, f"{where}.layers[0].self_attn")
        require(self._layers[0], "input_layernorm", self.name, f"{where}.layers[0]")
        self._rotate: Callable = require(
            sys.modules[type(first).__module__], "apply_rotary_emb", self.name, "modeling module"
        )
        self._sandwich_norms = {}
        self._cos_sin = {}
        types = getattr(self.config, "layer_types", None) or ["full_attention"] * len(self._layers)
        unknown = sorted(set(types) - _LAYER_TYPES)
        if unknown:
            raise UnsupportedArchitectureError(
                f"{self.name}: layer types {unknown} are not Llama 4's full or chunked attention; "
                "spantrace cannot reproduce their masks."
            )
        if "chunked_attention" in types and not getattr(self.config, "attention_chunk_size", None):
            raise UnsupportedArchitectureError(
                f"{self.name}: chunked_attention layers but no attention_chunk_size in the config; fix the config."
            )

    # attention -----------------------------------------------------------------------------------
    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        chunked = self._layer_type(index) == "chunked_attention"
        return AttentionRule(
            num_heads=attention.num_attention_heads,
            num_kv_heads=attention.num_key_value_heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),
            softcap=None,
            sliding_window=None,
            attention_chunk=int(self.config.attention_chunk_size) if chunked else None,
        )

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._layers[index].input_layernorm(x_in)  # [N, D]
        n = hidden.shape[0]
        # The model's own layout [B, N, G, d], so the rotation and norm run exactly as in its forward.
        keys = attention.k_proj(hidden).view(1, n, rule.num_kv_heads, rule.head_dim)
        values = attention.v_proj(hidden).view(n, rule.num_kv_heads, rule.head_dim).transpose(0, 1)  # [G, N, d]
        if self._uses_rotary(index):
            freqs_cis = self._rotary_tables(index, hidden, n)  # [1, N, d/2] complex
            _, keys = self._rotate(keys, keys, freqs_cis.to(keys.device))
        qk_norm = self._qk_norm(index)
        if qk_norm is not None:
            keys = qk_norm(keys)
        return keys[0].transpose(0, 1), values  # [G, N, d] each

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._layers[index].input_layernorm(x_rows)  # [C, D]
        c = hidden.shape[0]
        queries = attention.q_proj(hidden).view(1, c, rule.num_heads, rule.head_dim)  # [1, C, H, d]
        positions = positions.to(hidden.device)
        if self._uses_rotary(index):
            freqs_cis = self._rotary_tables(index, hidden, length)  # [1, N, d/2] complex
            queries, _ = self._rotate(queries, queries, freqs_cis[:, positions.to(freqs_cis.device)])
        qk_norm = self._qk_norm(index)
        if qk_norm is not None:
            queries = qk_norm(queries)
        scales = self._temperature(index, positions)  # [C] float32, or None
        if scales is not None:  # multiplied in float32 and cast back, as the model does
            queries = (queries * scales.view(1, c, 1, 1)).to(queries.dtype)
        return queries[0].transpose(0, 1)  # [H, C, d]

    def _qk_norm(self, index: int) -> nn.Module | None:
        """The weightless L2 norm on queries and keys (rotary layers of ``use_qk_norm`` models), or None."""
        return getattr(self._attention(index), "qk_norm", None)

    def _temperature(self, index: int, positions: torch.Tensor) -> torch.Tensor | None:
        """Per-sink query scale ``1 + attn_scale · log(1 + ⌊(pos + 1) / floor_scale⌋)`` [C] on layers without
        rotary when ``attn_temperature_tuning`` is on; else None."""
        attention = self._attention(index)
        if not attention.attn_temperature_tuning or self._uses_rotary(index):
            return None
        return torch.log1p(torch.floor((positions.float() + 1.0) / attention.floor_scale)) * attention.attn_scale + 1.0


register_adapter("llama4_text", Llama4Adapter)
