"""Qwen3.5 / Qwen3.6 (dense and MoE) and Qwen3-Next: three Gated DeltaNet layers before every gated
full-attention layer, both split exactly (``spantrace.layers.deltanet``, ``spantrace.layers.gated_attention``,
docs/hybrids.md) and served as ``SplitLayer`` s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import SandwichNorm
from ..errors import UnsupportedArchitectureError
from ..layers.deltanet import GatedDeltaNetLayer
from ..layers.gated_attention import GatedAttentionLayer, rotary_tables
from ..layers.split import GatedAttentionSplit, SplitLayer, float32
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..capture import Capture

# The model types of these hybrids (the text-only loads and the image-text wrappers).
HYBRID_TYPES = frozenset({"qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"})


def text_stack(model: nn.Module) -> nn.Module:
    """The decoder stack (``layers``, ``rotary_emb``) of a causal LM or of its multimodal wrapper."""
    base = getattr(model, "model", model)
    base = getattr(base, "language_model", base)
    if not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
        raise UnsupportedArchitectureError(f"{type(model).__name__}: no decoder stack with layers and rotary_emb")
    return base


class QwenHybridAdapter:
    """Qwen3.5 / Qwen3.6 (``qwen3_5``, ``qwen3_5_text``, ``qwen3_5_moe``, ``qwen3_5_moe_text``) and Qwen3-Next.

    Each decoder layer holds either a Gated DeltaNet (``linear_attn``) or a gated full attention
    (``self_attn`` whose ``q_proj`` also emits a gate), then ``post_attention_layernorm`` and the MLP or MoE.
    Both are split exactly (docs/hybrids.md); values go through the short convolution to their tokens.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.name = getattr(model.config, "model_type", type(model).__name__)
        self._stack = text_stack(model)
        self._layers = self._stack.layers
        self._tables: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        for index, layer in enumerate(self._layers):
            if self.layer_kind(index) == "gated deltanet":
                continue
            if not hasattr(layer, "self_attn"):
                raise UnsupportedArchitectureError(
                    f"{self.name}: layer {index} has neither linear_attn (Gated DeltaNet) nor self_attn"
                )

    # hook points ---------------------------------------------------------------------------------
    def base_model(self) -> nn.Module:
        return self._stack

    def num_layers(self) -> int:
        return len(self._layers)

    def layer(self, index: int) -> nn.Module:
        return self._layers[index]

    def mid_hook_module(self, index: int) -> nn.Module:
        return self._layers[index].post_attention_layernorm

    def sandwich_norm(self, index: int) -> SandwichNorm | None:
        return None

    # layer kinds -----------------------------------------------------------------------------------
    def layer_kind(self, index: int) -> str:
        return "gated deltanet" if hasattr(self._layers[index], "linear_attn") else "gated attention"

    def mixing_layer(self, index: int, capture: Capture) -> SplitLayer:
        layer = self._layers[index]
        parameter = next(layer.parameters())
        x_in = capture.x_in[index]
        x_in32, x_mid32 = float32(parameter.device, x_in, capture.x_mid[index])
        if self.layer_kind(index) == "gated deltanet":
            split = GatedDeltaNetLayer(layer, x_in)
            return SplitLayer(
                index, "gated deltanet", split, split.token_values, x_in32, x_mid32
            )
        cos, sin = self._rotary(x_in.to(device=parameter.device, dtype=parameter.dtype))
        attention = GatedAttentionLayer(layer, x_in, cos, sin)
        return GatedAttentionSplit(index, "gated attention", attention, attention.token_values, x_in32, x_mid32)

    def _rotary(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.shape[0], like.device, like.dtype)
        if key not in self._tables:
            self._tables.clear()
            self._tables[key] = rotary_tables(self._stack.rotary_emb, like, like.shape[0])
        return self._tables[key]


for _model_type in sorted(HYBRID_TYPES):
    register_adapter(_model_type, QwenHybridAdapter)
