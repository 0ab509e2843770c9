"""Qwen3.5 / Qwen3.6 (dense and MoE) and Qwen3-Next: three Gated DeltaNet layers before every gated
full-attention layer, both split exactly (``spantrace.layers.deltanet``, ``spantrace.layers.gated_attention``,
docs/hybrids.md) and served as ``SplitLayer`` s.

The Qwen3.5 image-text wrappers (``qwen3_5``, ``qwen3_5_moe`` with a vision tower) take images too
(``QwenHybridVisionAdapter``): the capture runs the wrapper's base (vision tower, merger, text stack) and keeps the
M-RoPE position ids its rotary module was called with, and the gated attention's rotary tables are rebuilt by that
same module from those ids (docs/vision-engine.md). Text-only runs take the text path unchanged.
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
from .vision import QwenImageInputs

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
        self._tables_positions: torch.Tensor | None = None  # the position ids the kept tables were built from
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
        like = x_in.to(device=parameter.device, dtype=parameter.dtype)
        cos, sin = self._rotary(like, capture.position_ids)
        attention = GatedAttentionLayer(layer, x_in, cos, sin)
        return GatedAttentionSplit(index, "gated attention", attention, attention.token_values, x_in32, x_mid32)

    def _rotary(
        self, like: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for the tokens of ``like``: text positions 0…N−1, or the position ids a run with images used
        (M-RoPE's [3, 1, N], kept by the capture), which the model's own rotary module turns into its tables."""
        length = like.shape[0]
        key = (length, like.device, like.dtype)
        if key not in self._tables or self._tables_positions is not positions:  # another run's ids: rebuild
            self._tables.clear()
            self._tables_positions = positions  # held, so the identity check cannot meet a recycled tensor
            if positions is None:
                self._tables[key] = rotary_tables(self._stack.rotary_emb, like, length)
            else:
                dummy = like.new_zeros(1, length, like.shape[-1])
                self._tables[key] = self._stack.rotary_emb(dummy, positions[..., :length].to(like.device))
        return self._tables[key]


class QwenHybridVisionAdapter(QwenImageInputs, QwenHybridAdapter):
    """A Qwen3.5 image-text wrapper with its vision tower: the hybrid text stack, and Qwen's image path (model
    inputs checked and completed, M-RoPE ids kept and replayed, the self-check's synthetic image). The vision tower
    has no deepstack: the image features enter only as input embeddings, so a forward from them repeats the run."""

    def input_model(self) -> nn.Module:
        """The wrapper's base (vision tower, merger, text stack; no LM head): what a capture with images runs."""
        return self.model.model

    def position_module(self) -> nn.Module:
        """The text rotary module, whose second argument is the position ids the model used (M-RoPE's [3, 1, N])."""
        return self._stack.rotary_emb


def hybrid_adapter(model: PreTrainedModel) -> QwenHybridAdapter:
    """The adapter of a ``qwen3_5`` / ``qwen3_5_moe`` load: with images when the model holds a vision tower (the
    image-text wrapper as released), the text path only otherwise."""
    base = getattr(model, "model", None)
    if getattr(base, "visual", None) is not None and hasattr(base, "language_model"):
        return QwenHybridVisionAdapter(model)
    return QwenHybridAdapter(model)


# the image-text wrappers' types may hold a vision tower; the text-only types never do
IMAGE_TEXT_TYPES = frozenset({"qwen3_5", "qwen3_5_moe"})
for _model_type in sorted(HYBRID_TYPES):
    register_adapter(_model_type, hybrid_adapter if _model_type in IMAGE_TEXT_TYPES else QwenHybridAdapter)
