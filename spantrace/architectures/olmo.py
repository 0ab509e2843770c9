"""Post-norm decoders: OLMo 2, OLMo 3 and EXAONE 4 (``olmo2``, ``olmo3``, ``exaone4``).

Their layers are laid out like Llama's (``model.model.layers[i].self_attn`` with q/k/v/o projections,
one rotary module on ``model.model.rotary_emb``) but the norms sit elsewhere:

- No norm before attention: the projections read the residual ``x_in`` itself, so keys, values and
  queries are recomputed from ``x_in`` directly (there is no ``input_layernorm``).
- q/k RMSNorm. OLMo 2/3 normalise the whole projection, ``H·d`` wide for queries and ``G·d`` for keys,
  before it is split into heads; EXAONE 4 normalises each ``d``-wide head after the split. Either way
  the norm only mixes one token's own features, so applying the model's own module at the same point
  (decided per layer from the norm's width) is exact.
- An RMSNorm on the attention output before the residual add (``post_attention_layernorm``). Its
  per-sink scale ``s_i = 1/rms(a_i)`` is frozen at its forward value and its gain folded into the
  output projection, exactly like Gemma's sandwich norm (``SandwichNorm``). The residual after
  attention then feeds the MLP with no norm in between (``post_feedforward_layernorm`` acts on the MLP's
  output), so ``x_mid`` is read from the input of ``layer.mlp``.
- Sliding windows (OLMo 3, EXAONE 4): the model picks each layer's mask from ``config.layer_types``,
  the window being ``config.sliding_window`` on ``"sliding_attention"`` layers and none on
  ``"full_attention"`` layers; the rule here reads the same two fields. Any other layer type is refused.
- Rotary tables per layer type (OLMo 3: e.g. YaRN on full-attention layers only) come from the rotary
  module with the layer's type, as for Gemma 3.
- EXAONE 4's "global NoPE": when the config has a sliding window, its full-attention layers skip the
  rotary embedding entirely (the attention module applies it only if ``sliding_window is None or
  is_sliding``); the adapter applies the same test per layer.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule, SandwichNorm
from ..errors import UnsupportedArchitectureError
from .llama import LlamaStyleAdapter, require
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Full-attention layers skip rotary when the model also has sliding layers (EXAONE 4's hybrid attention).
_NOPE_ON_FULL_LAYERS = frozenset({"exaone4"})
_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


class PostNormAdapter(LlamaStyleAdapter):
    """Adapter for OLMo 2/3 and EXAONE 4: no pre-attention norm, a norm on the attention output.

    Hook points, rotary tables, the q/k/v projections and the output projection are the Llama-style
    ones; what differs is where the attention input and the q/k norms come from, the window rule and
    which layers use rotary.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        # Not LlamaStyleAdapter.__init__: that one requires the `input_layernorm` these layers lack by design.
        stack = self._locate_stack(model)
        for index, layer in enumerate(self._layers):
            where = f"{stack}.layers[{index}]"
            if hasattr(layer, "input_layernorm"):
                raise UnsupportedArchitectureError(
                    f"{self.name}: layer {index} has a norm before attention (input_layernorm), so it is not laid "
                    "out like OLMo 2; register it with the Llama-style adapter instead."
                )
            attention = require(layer, "self_attn", self.name, where)
            for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
                require(attention, part, self.name, f"{where}.self_attn")
            require(layer, "post_attention_layernorm", self.name, where)
            require(layer, "mlp", self.name, where)
            layer_type = self._layer_type(index)
            if layer_type is not None and layer_type not in _LAYER_TYPES:
                raise UnsupportedArchitectureError(
                    f"{self.name}: layer {index} has attention type {layer_type!r}; only full_attention and "
                    "sliding_attention layers are supported."
                )
            rule = self.attention_rule(index)
            self._norm_placement(index, "q", rule.num_heads, rule.head_dim)
            self._norm_placement(index, "k", rule.num_kv_heads, rule.head_dim)
        self._rotate = require(
            _modeling_module(self._layers[0].self_attn), "apply_rotary_pos_emb", self.name, "modeling module"
        )

    # hook points ---------------------------------------------------------------------------------
    def mid_hook_module(self, index: int) -> nn.Module:
        # The MLP reads the residual after attention with no norm in between: its input is x_mid.
        return self._layers[index].mlp

    def _read_sandwich_norm(self, index: int) -> SandwichNorm | None:
        norm = self._layers[index].post_attention_layernorm  # RMSNorm scaling by `weight`
        return SandwichNorm(module=norm, gain=norm.weight.detach().float(), eps=float(norm.variance_epsilon))

    # attention -----------------------------------------------------------------------------------
    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        heads = self.config.num_attention_heads
        kv_heads = getattr(self.config, "num_key_value_heads", None) or heads
        # The model masks a layer with the sliding-window mask iff its type is sliding_attention.
        window = self.config.sliding_window if self._layer_type(index) == "sliding_attention" else None
        return AttentionRule(
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),
            softcap=None,
            sliding_window=int(window) if window else None,
        )

    def _uses_rotary(self, index: int) -> bool:
        if self.text_type in _NOPE_ON_FULL_LAYERS:
            # EXAONE 4 rotates only when the config has no window at all, or on its sliding layers.
            return self.config.sliding_window is None or self._layer_type(index) == "sliding_attention"
        return True

    def _norm_placement(self, index: int, part: str, heads: int, head_dim: int) -> str | None:
        """Where layer ``index``'s q or k norm acts: "full" (all heads at once), "head" (each head) or None."""
        norm = getattr(self._attention(index), f"{part}_norm", None)
        if norm is None:
            return None
        width = norm.weight.shape[-1]
        if width == heads * head_dim:  # OLMo 2/3: before the head split (also right for one head)
            return "full"
        if width == head_dim:  # EXAONE 4: per head
            return "head"
        raise UnsupportedArchitectureError(
            f"{self.name}: layer {index}'s {part}_norm is {width} wide, neither one head ({head_dim}) nor all "
            f"{heads} heads ({heads * head_dim}); this q/k norm layout is not supported."
        )

    def _heads(self, index: int, part: str, hidden: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        """``hidden [C, D]`` -> the layer's q or k ``[heads, C, d]`` with its norm, before rotary."""
        norm = getattr(self._attention(index), f"{part}_norm", None)
        placement = self._norm_placement(index, part, heads, head_dim)
        projected = self._projection(index, part, hidden)  # [C, heads·d]
        if placement == "full":
            projected = norm(projected)
        split = projected.view(hidden.shape[0], heads, head_dim).transpose(0, 1)  # [heads, C, d]
        return norm(split) if placement == "head" else split

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rule = self.attention_rule(index)
        n = x_in.shape[0]
        keys = self._heads(index, "k", x_in, rule.num_kv_heads, rule.head_dim)  # [G, N, d]
        values = self._projection(index, "v", x_in).view(n, rule.num_kv_heads, rule.head_dim).transpose(0, 1)
        if self._uses_rotary(index):
            cos, sin = self._rotary_tables(index, x_in, n)
            _, keys = self._rotate(keys[None], keys[None], cos, sin)
            keys = keys[0]
        return keys, values  # [G, N, d] each

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        rule = self.attention_rule(index)
        queries = self._heads(index, "q", x_rows, rule.num_heads, rule.head_dim)  # [H, C, d]
        if self._uses_rotary(index):
            cos, sin = self._rotary_tables(index, x_rows, length)
            positions = positions.to(cos.device)
            queries, _ = self._rotate(queries[None], queries[None], cos[:, positions], sin[:, positions])
            queries = queries[0]
        return queries  # [H, C, d]


def _modeling_module(attention: nn.Module) -> object:
    return sys.modules[type(attention).__module__]


# the model types this adapter reads (docs/architectures.md lists the checkpoints and details of each)
for _model_type in (
    "olmo2",
    "olmo3",
    "exaone4",
):
    register_adapter(_model_type, PostNormAdapter)
