"""Llama-style decoders: every family laid out like ``LlamaForCausalLM`` (see docs/architectures.md).

They share one layout — ``model.model.layers[i].self_attn`` with q/k/v/o projections (Phi-3 fuses
q/k/v), a rotary embedding on ``model.model.rotary_emb`` and the rotation function in the model's own
modeling module. Multimodal wrappers (Gemma 3, Mistral 3) hold that stack at
``model.model.language_model`` with its sizes in ``config.text_config``. The differences are data:
q/k norms before rotary (Qwen3, Gemma 3) or after it (Hunyuan), q/k/v clamping (OLMo), a norm on the
attention output (Gemma's sandwich, GLM-4's ``post_self_attn_layernorm``), soft-capping (Gemma 2),
per-layer sliding windows and rotary tables (Gemma 3, gpt-oss), per-head sink logits (gpt-oss), layers
without rotary (SmolLM3's ``no_rope_layers``), a residual multiplier on the attention branch (Granite)
and a query scale that grows with position (Ministral 3's ``llama_4_scaling_beta``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule, SandwichNorm
from ..errors import UnsupportedArchitectureError
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def require(obj: object, attribute: str, architecture: str, where: str) -> object:
    if not hasattr(obj, attribute):
        raise UnsupportedArchitectureError(
            f"{architecture}: expected `{where}.{attribute}` but the model has none; "
            "this architecture is not supported by spantrace (see `spantrace models`)."
        )
    return getattr(obj, attribute)


class LlamaStyleAdapter:
    """Adapter for decoders laid out like ``LlamaForCausalLM``."""

    def __init__(self, model: PreTrainedModel) -> None:
        where = self._locate_stack(model)
        first = self._layers[0]
        attention = require(first, "self_attn", self.name, f"{where}.layers[0]")
        if not (hasattr(attention, "qkv_proj") or all(hasattr(attention, p) for p in ("q_proj", "k_proj"))):
            raise UnsupportedArchitectureError(
                f"{self.name}: the attention module has neither q_proj/k_proj/v_proj nor a fused qkv_proj."
            )
        require(attention, "o_proj", self.name, f"{where}.layers[0].self_attn")
        require(first, "input_layernorm", self.name, f"{where}.layers[0]")
        self._rotate: Callable = require(
            sys.modules[type(attention).__module__], "apply_rotary_pos_emb", self.name, "modeling module"
        )

    def _locate_stack(self, model: PreTrainedModel) -> str:
        """Find the decoder stack, its layers, rotary module and text config; returns where the stack is."""
        self.model = model
        self.name = getattr(model.config, "model_type", type(model).__name__)
        # The text stack and its config: a multimodal wrapper holds them one level down.
        self.config = model.config.get_text_config()
        self.text_type = getattr(self.config, "model_type", self.name)
        self._base = require(model, "model", self.name, type(model).__name__)
        where = "model.model"
        self._outer: nn.Module | None = None  # a multimodal wrapper's base: takes input_ids with images
        if hasattr(self._base, "language_model"):
            self._outer = self._base
            self._base, where = self._base.language_model, "model.model.language_model"
        self._positions: torch.Tensor | None = None  # position ids a forward pass used (see ``at_positions``)
        self._positioned: tuple[torch.Tensor, LlamaStyleAdapter] | None = None
        self._layers = require(self._base, "layers", self.name, where)
        self._rotary = require(self._base, "rotary_emb", self.name, where)
        self._sandwich_norms: dict[int, SandwichNorm | None] = {}
        self._cos_sin: dict[tuple[str | None, int, torch.device, torch.dtype], tuple] = {}
        return where

    # hook points ---------------------------------------------------------------------------------
    def base_model(self) -> nn.Module:
        return self._base

    def num_layers(self) -> int:
        return len(self._layers)

    def position_module(self) -> nn.Module:
        """The rotary module, whose second argument is the position ids the model used (kept by the capture)."""
        return self._rotary

    def at_positions(self, position_ids: torch.Tensor) -> LlamaStyleAdapter:
        """This adapter with its rotary tables built from ``position_ids`` (what the model's rotary module was
        called with: M-RoPE's [3, 1, N]) instead of 0…N−1; one bound copy is kept per position tensor."""
        kept = getattr(self, "_positioned", None)
        if kept is not None and kept[0] is position_ids:
            return kept[1]
        bound = copy.copy(self)
        bound._positions, bound._cos_sin, bound._positioned = position_ids, {}, None
        self._positioned = (position_ids, bound)
        return bound

    def layer(self, index: int) -> nn.Module:
        return self._layers[index]

    def mid_hook_module(self, index: int) -> nn.Module:
        layer = self._layers[index]
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: sandwich norms
            return layer.pre_feedforward_layernorm
        return require(layer, "post_attention_layernorm", self.name, f"model.model.layers[{index}]")

    def sandwich_norm(self, index: int) -> SandwichNorm | None:
        # Read once per layer: every trace asks for it on every layer and hop.
        if index not in self._sandwich_norms:
            self._sandwich_norms[index] = self._read_sandwich_norm(index)
        return self._sandwich_norms[index]

    def _read_sandwich_norm(self, index: int) -> SandwichNorm | None:
        layer = self._layers[index]
        if hasattr(layer, "post_self_attn_layernorm"):  # GLM-4: normed attention output, then the residual
            norm = layer.post_self_attn_layernorm
        elif hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: post_attention_layernorm is the sandwich
            norm = layer.post_attention_layernorm
        else:
            return None
        weight = norm.weight.detach().float()
        # Gemma's RMSNorm scales by (1 + weight), initialised at zero; Llama's by weight.
        gain = 1.0 + weight if _is_offset_rms_norm(norm) else weight
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
        return SandwichNorm(module=norm, gain=gain, eps=eps)

    # attention -----------------------------------------------------------------------------------
    def _attention(self, index: int) -> nn.Module:
        return self._layers[index].self_attn

    def _layer_type(self, index: int) -> str | None:
        types = getattr(self.config, "layer_types", None)
        return types[index] if types else None

    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        heads = self.config.num_attention_heads
        kv_heads = getattr(self.config, "num_key_value_heads", None) or heads
        if hasattr(attention, "sliding_window"):
            window = attention.sliding_window
        else:  # Mistral, Phi-3: one window for every layer, passed at call time
            window = getattr(self.config, "sliding_window", None)
        # Only Gemma 2 passes its soft-capping to the attention function; Gemma 3 configs carry the
        # field but the model ignores it, and so do we.
        softcap = getattr(attention, "attn_logit_softcapping", None) if self.text_type in _SOFTCAPPED else None
        sinks = getattr(attention, "sinks", None)  # gpt-oss: one learned logit per head in every denominator
        return AttentionRule(
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),
            softcap=float(softcap) if softcap else None,
            sliding_window=int(window) if window else None,
            sink_logits=sinks.detach().float() if isinstance(sinks, torch.Tensor) else None,
        )

    def _uses_rotary(self, index: int) -> bool:
        """False on layers that skip the rotary embedding (SmolLM3's ``no_rope_layers``)."""
        return bool(getattr(self._attention(index), "use_rope", True))

    def _query_scale(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Ministral 3's position-dependent query scale ``1 + β·log(1 + ⌊pos / original_max⌋)``, [C]; else None."""
        rope = getattr(self.config, "rope_parameters", None) or {}
        beta = rope.get("llama_4_scaling_beta") if isinstance(rope, dict) else None
        if self.text_type not in _LLAMA4_QUERY_SCALED or beta is None:
            return None
        original = rope["original_max_position_embeddings"]
        return 1 + beta * torch.log(1 + torch.floor(positions.float() / original))

    def _rotary_tables(self, index: int, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [1, length, d] for positions 0…length−1 (dynamic rope sees the whole sequence)."""
        layer_type = self._layer_type(index) if _rotary_takes_layer_type(self._rotary) else None
        key = (layer_type, length, like.device, like.dtype)
        if key not in self._cos_sin:
            positions = torch.arange(length, device=like.device)[None]  # [1, N]
            used = getattr(self, "_positions", None)  # subclasses that find their own stack set none
            if used is not None:  # the ids the forward pass used, e.g. M-RoPE's [3, 1, N]
                positions = used[..., :length].to(like.device)
            dummy = like.new_zeros(1, length, like.shape[-1])
            if layer_type is None:
                tables = self._rotary(dummy, positions)
            else:
                tables = self._rotary(dummy, positions, layer_type)
            if len(self._cos_sin) > 8:
                self._cos_sin.clear()
            self._cos_sin[key] = tables
        return self._cos_sin[key]

    def _projection(self, index: int, part: str, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [C, D]`` through the q, k or v projection (bias included) -> [C, heads·d]."""
        attention = self._attention(index)
        clip = getattr(self.config, "clip_qkv", None)  # OLMo: q, k and v clamped to ±clip_qkv after projection
        if not hasattr(attention, "qkv_proj"):
            projected = getattr(attention, f"{part}_proj")(hidden)
            return projected.clamp(-clip, clip) if clip is not None else projected
        rule = self.attention_rule(index)  # Phi-3: slice the fused weight, don't compute all three
        q_size, kv_size = rule.num_heads * rule.head_dim, rule.num_kv_heads * rule.head_dim
        start, size = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}[part]
        fused = attention.qkv_proj
        bias = fused.bias[start : start + size] if fused.bias is not None else None
        return nn.functional.linear(hidden, fused.weight[start : start + size], bias)

    def _attention_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """What the q/k/v projections read: the layer's pre-attention norm of ``x`` ``[C, D]``."""
        return self._layers[index].input_layernorm(x)

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._attention_input(index, x_in)  # [N, D]
        n = hidden.shape[0]
        keys = self._projection(index, "k", hidden).view(n, rule.num_kv_heads, rule.head_dim).transpose(0, 1)
        values = self._projection(index, "v", hidden).view(n, rule.num_kv_heads, rule.head_dim).transpose(0, 1)
        if hasattr(attention, "k_norm"):  # Qwen3, Gemma 3: per-head RMSNorm before rotary
            keys = attention.k_norm(keys)
        multiplier = getattr(attention, "key_multiplier", None)  # Falcon-H1: keys scaled after k_proj
        if multiplier is not None:
            keys = keys * multiplier
        if self._uses_rotary(index):
            cos, sin = self._rotary_tables(index, hidden, n)
            _, keys = self._rotate(keys[None], keys[None], cos, sin)
            keys = keys[0]
        if hasattr(attention, "key_layernorm"):  # Hunyuan: per-head RMSNorm after rotary
            keys = attention.key_layernorm(keys)
        return keys, values  # [G, N, d] each

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._attention_input(index, x_rows)  # [C, D]
        c = hidden.shape[0]
        queries = self._projection(index, "q", hidden).view(c, rule.num_heads, rule.head_dim).transpose(0, 1)
        if hasattr(attention, "q_norm"):
            queries = attention.q_norm(queries)
        if self._uses_rotary(index):
            cos, sin = self._rotary_tables(index, hidden, length)
            positions = positions.to(cos.device)
            queries, _ = self._rotate(queries[None], queries[None], cos[:, positions], sin[:, positions])
            queries = queries[0]
        if hasattr(attention, "query_layernorm"):
            queries = attention.query_layernorm(queries)
        scale = self._query_scale(positions)
        if scale is not None:
            queries = queries * scale.to(device=queries.device, dtype=queries.dtype)[None, :, None]
        return queries  # [H, C, d]

    def output_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rule = self.attention_rule(index)
        o_proj = self._attention(index).o_proj
        weight = o_proj.weight.detach()  # [D, H*d]
        per_head = weight.T.reshape(rule.num_heads, rule.head_dim, weight.shape[0])  # [H, d, D]
        bias = o_proj.bias.detach() if o_proj.bias is not None else None
        multiplier = self._attention_output_scale(index)
        if multiplier != 1.0:
            per_head = per_head * multiplier
            bias = bias * multiplier if bias is not None else None
        return per_head, bias

    def _attention_output_scale(self, index: int) -> float:
        """A factor on the whole attention branch before the residual add, folded into W_O and b_O (Granite's
        ``residual_multiplier``); 1 elsewhere."""
        return float(getattr(self._layers[index], "residual_multiplier", 1.0))


_SOFTCAPPED = frozenset({"gemma2"})
_LLAMA4_QUERY_SCALED = frozenset({"ministral3"})


def _is_offset_rms_norm(norm: nn.Module) -> bool:
    """True for RMSNorms that multiply by ``1 + weight`` (Gemma's), judged by a probe."""
    with torch.no_grad():
        probe = torch.ones(1, norm.weight.shape[0], dtype=norm.weight.dtype, device=norm.weight.device)
        out = norm(probe).float()[0]  # rms(1) = 1, so out = gain (up to eps)
        weight = norm.weight.float()
        return bool((out - (1.0 + weight)).abs().max() < (out - weight).abs().max())


def _rotary_takes_layer_type(rotary: nn.Module) -> bool:
    return hasattr(rotary, "layer_types") and hasattr(rotary, "rope_type") and isinstance(rotary.rope_type, dict)


# the model types this adapter reads (docs/architectures.md lists the checkpoints and details of each)
for _model_type in (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    # softmax attention with a twist the Llama-style adapter reads from the modules (docs/architectures.md)
    "gpt_oss",
    "smollm3",
    "glm4",
    "granite",
    "granitemoe",
    "ministral3",
    # only the MLP differs (mixture of experts): attention attribution is the Llama-style one
    "qwen3_moe",
    "glm4_moe",
    "seed_oss",
    "hy_v3",
    "mixtral",
    "qwen2_moe",
    "phimoe",
    "ernie4_5",
    "ernie4_5_moe",
    "exaone",
    "starcoder2",
    "nemotron",
    "olmo",
    "hunyuan_v1_dense",
    "hunyuan_v1_moe",
):
    register_adapter(_model_type, LlamaStyleAdapter)
