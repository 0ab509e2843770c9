"""Hybrid models: layers that are not plain softmax attention, seen as ``MixingLayer`` s.

``SplitLayer`` turns one of the exact per-source splits (``GatedAttentionLayer``, ``GatedDeltaNetLayer``,
``Mamba2Mixing``, see docs/hybrids.md) into what FlashTrace, token-wise IFR and the load-time self-check
read: the residual, the span aggregate as a ``SpanPart`` with the per-channel weights folded into the
values, and each sink's own parts. ``QwenHybridAdapter`` is the adapter of Qwen3.5 / Qwen3.6 (dense and
MoE) and Qwen3-Next: three Gated DeltaNet layers before every gated full-attention layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import SandwichNorm, SpanPart
from ..errors import UnsupportedArchitectureError
from ..kernels.proximity import Workspace
from .deltanet import GatedDeltaNetLayer, text_stack
from .gated_attention import GatedAttentionLayer, rotary_tables

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..capture import Capture


@dataclass(eq=False)
class SplitLayer:
    """A ``MixingLayer`` over an exact per-source split whose mixing weight is per channel.

    ``split`` offers ``span_values(sinks, weights) -> (effective values [H, N, d], out_weight [H, d, D])`` and
    ``residual(sinks) -> [C, D]``; ``token_values(sinks) -> [H, C, N, d]`` is each sink's own effective values.
    ``x_in``/``x_mid`` are the captured residuals in float32.
    """

    index: int
    kind: str
    split: object
    token_values: Callable[[torch.Tensor], torch.Tensor]
    x_in: torch.Tensor  # [N, D] float32
    x_mid: torch.Tensor  # [N, D] float32

    @property
    def num_heads(self) -> int:
        return int(self.split.out_weight.shape[0])

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        return self.split.residual(sinks).float()

    def span_parts(
        self, sinks: torch.Tensor, weights: torch.Tensor, width: int, chunk_size: int, workspace: object = None
    ) -> list[SpanPart]:
        values, out_weight = self.split.span_values(sinks, weights)  # [H, N, d], [H, d, D]
        return [SpanPart(None, values[:, :width], out_weight)]

    def token_parts(self, sinks: torch.Tensor, width: int, workspace: object = None) -> torch.Tensor:
        values = self.token_values(sinks)[:, :, :width]  # [H, C, width, d]
        return torch.einsum("hcnv,hvd->hcnd", values.float(), self.split.out_weight.float())


@dataclass(eq=False)
class GatedAttentionSplit(SplitLayer):
    """A gated full-attention layer: also softmax rows, for the attention-reading baselines."""

    def rows(self, sinks: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Attention probabilities ``[H, C, width]`` (the gate is not part of them)."""
        return self.split.rows(sinks, width)

    def summed_rows(
        self,
        sinks: torch.Tensor,
        sink_weights: torch.Tensor,
        width: int,
        chunk_size: int,
        workspace: Workspace | None = None,
    ) -> torch.Tensor:
        """``Σ_i w_i α[h, i, j]`` over the sinks: [H, width] float32 (see ``LayerInputs.summed_rows``)."""
        return self.split.summed_rows(sinks, sink_weights, width, chunk_size, workspace)


def float32(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The captured residuals as a layer's arithmetic reads them: float32 on the layer's device."""
    return tuple(tensor.to(device=device, dtype=torch.float32) for tensor in tensors)


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
                index, "gated deltanet", split, lambda sinks: split.token_values(sinks).transpose(0, 1), x_in32, x_mid32
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
