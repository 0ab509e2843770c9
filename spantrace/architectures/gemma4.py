"""Gemma 4 (``gemma4_text``, and the multimodal ``gemma4`` holding it at ``model.model.language_model``).

The layer is Gemma 3's (sandwich norms, q/k norms, sliding and full layers with their own rotary
tables), so ``LlamaStyleAdapter`` gives the hook points, the sandwich norm and the output projection.
What differs, and how each detail is kept exact:

- Per-layer shapes: full-attention layers have their own head dim (``global_head_dim``) and kv-head count
  (``num_global_key_value_heads``). The rule of each layer is read from its attention module
  (``head_dim``, ``num_key_value_groups``), never from the global config.
- ``scaling = 1``: the q/k RMSNorms carry the scale; the rule takes the module's own ``scaling``.
- ``v_norm``: a scale-free RMSNorm on each value head, per token. It is part of the value vector of a
  source position (nothing from other positions enters it), so the values are ``v_norm(v_proj(x))``.
- ``attention_k_eq_v``: full layers without ``v_proj`` take their values from the key projection, before
  the k norm and the rotary embedding (``v_norm(k_proj(x))``).
- KV sharing (``num_kv_shared_layers``): the last layers attend to the keys and values stored by the last
  earlier non-shared layer of the same type. The adapter names that layer (``key_value_layer``) and the
  library computes its keys and values from that layer's own captured ``x_in``: exact, and one copy.
- Rotary: one rotary module called per layer type, and ``apply_rotary_pos_emb(x, cos, sin)`` rotates one
  tensor at a time. Partial rotary ("proportional", full layers) is in the tables themselves (zero
  frequencies past the rotated share give cos = 1, sin = 0), so applying them over the whole head is exact.
- ``layer_scalar`` multiplies the layer's output after both residual adds (and after the per-layer input
  embedding's residual add): it scales the next layer's ``x_in``, not this layer's attention update, so it
  does not enter the decomposition. Per-layer inputs join the residual after the MLP, outside ``x_in``/``x_mid``.
- No attention logit soft-capping (the module passes none); the final-logit soft-cap is outside attention.

Refused at load: ``use_bidirectional_attention="all"`` (every token sees later tokens, no causal order to
attribute along), and a KV-shared layer whose keys and values no earlier layer computes (every layer shared:
the keys would come from outside the model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..contract import AttentionRule
from ..errors import UnsupportedArchitectureError
from .llama import LlamaStyleAdapter
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Gemma4Adapter(LlamaStyleAdapter):
    """Adapter for ``Gemma4ForCausalLM`` and the text stack of ``Gemma4ForConditionalGeneration``."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config.get_text_config()
        name = getattr(model.config, "model_type", type(model).__name__)
        if getattr(config, "use_bidirectional_attention", None) == "all":
            raise UnsupportedArchitectureError(
                f"{name}: use_bidirectional_attention='all' lets every token attend to later ones; spantrace "
                "attributes causal decoders only. Use a causal checkpoint (use_bidirectional_attention None/'vision')."
            )
        base = getattr(model, "model", None)
        base = getattr(base, "language_model", base)
        layers = getattr(base, "layers", None)
        if layers is not None and len(layers) and getattr(layers[0].self_attn, "is_kv_shared_layer", False):
            raise UnsupportedArchitectureError(
                f"{name}: every layer reuses keys and values computed outside the model (num_kv_shared_layers = "
                "num_hidden_layers); there is nothing to recompute them from. Use a checkpoint with its own K/V layers."
            )
        super().__init__(model)
        self._rotate_one = self._rotate  # the modeling module's apply_rotary_pos_emb(x, cos, sin, unsqueeze_dim)
        self._rotate = self._rotate_pair  # the (q, k, cos, sin) form the Llama-style adapter's callers expect
        self._sources = [self._find_key_value_layer(i) for i in range(self.num_layers())]

    # KV sharing ----------------------------------------------------------------------------------
    def _find_key_value_layer(self, index: int) -> int:
        attention = self._attention(index)
        if not getattr(attention, "is_kv_shared_layer", False):
            return index
        # The model reads shared_kv_states[layer_type], written by the last earlier "store" layer of that type.
        stores = [
            s for s in range(index)
            if getattr(self._attention(s), "store_full_length_kv", False)
            and self._attention(s).layer_type == attention.layer_type
        ]
        if not stores:
            raise UnsupportedArchitectureError(
                f"{self.name}: layer {index} reuses the keys and values of an earlier {attention.layer_type} layer, "
                "but no earlier layer stores them; this KV-sharing layout is not supported."
            )
        source = stores[-1]
        mine, theirs = self.attention_rule(index), self.attention_rule(source)
        if (mine.num_kv_heads, mine.head_dim) != (theirs.num_kv_heads, theirs.head_dim):
            raise UnsupportedArchitectureError(
                f"{self.name}: layer {index} shares layer {source}'s keys and values but expects other shapes "
                f"({mine.num_kv_heads}x{mine.head_dim} vs {theirs.num_kv_heads}x{theirs.head_dim})."
            )
        return source

    def key_value_layer(self, index: int) -> int:
        """The layer whose keys and values layer ``index`` attends to (itself unless it is KV-shared)."""
        return self._sources[index]

    # attention -----------------------------------------------------------------------------------
    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        heads = self.config.num_attention_heads
        window = attention.sliding_window
        return AttentionRule(
            num_heads=heads,
            num_kv_heads=heads // attention.num_key_value_groups,  # per layer: full layers may have fewer
            head_dim=attention.head_dim,  # per layer: full layers may be wider
            scaling=float(attention.scaling),  # 1: the q/k norms carry the scale
            softcap=None,
            sliding_window=int(window) if window else None,
        )

    def _rotate_pair(
        self, queries: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries/keys [B, heads, N, d], cos/sin [B, N, d] -> both rotated."""
        return self._rotate_one(queries, cos, sin, unsqueeze_dim=1), self._rotate_one(keys, cos, sin, unsqueeze_dim=1)

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sources[index] != index:
            raise UnsupportedArchitectureError(
                f"{self.name}: layer {index} has no keys or values of its own; it attends to layer "
                f"{self._sources[index]}'s (ask key_value_layer)."
            )
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._layers[index].input_layernorm(x_in)  # [N, D]
        n = hidden.shape[0]
        keys = attention.k_proj(hidden).view(n, rule.num_kv_heads, rule.head_dim)  # [N, G, d]
        # attention_k_eq_v: no v_proj, the values are the raw key projection (before k norm and rotary)
        values = keys if attention.v_proj is None else attention.v_proj(hidden).view(n, rule.num_kv_heads, -1)
        values = attention.v_norm(values)  # scale-free RMSNorm per token and head: [N, G, d]
        keys = attention.k_norm(keys)
        cos, sin = self._rotary_tables(index, hidden, n)  # [1, N, d]
        keys = self._rotate_one(keys, cos[0], sin[0], unsqueeze_dim=1)  # [N, G, d] with cos [N, 1, d]
        return keys.transpose(0, 1), values.transpose(0, 1)  # [G, N, d] each

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        attention = self._attention(index)
        rule = self.attention_rule(index)
        hidden = self._layers[index].input_layernorm(x_rows)  # [C, D]
        c = hidden.shape[0]
        queries = attention.q_norm(attention.q_proj(hidden).view(c, rule.num_heads, rule.head_dim))  # [C, H, d]
        cos, sin = self._rotary_tables(index, hidden, length)  # [1, N, d]
        positions = positions.to(cos.device)
        queries = self._rotate_one(queries, cos[0, positions], sin[0, positions], unsqueeze_dim=1)
        return queries.transpose(0, 1)  # [H, C, d]


# the model types this adapter reads (docs/architectures.md lists the checkpoints and details of each)
for _model_type in (
    "gemma4_text",
    "gemma4",
):
    register_adapter(_model_type, Gemma4Adapter)
