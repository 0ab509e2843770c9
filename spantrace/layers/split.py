"""``SplitLayer``: an exact per-source split of a layer whose mixing weight is per channel, seen as a ``MixingLayer``.

``SplitLayer`` turns one of the exact per-source splits (``GatedAttentionLayer``, ``GatedDeltaNetLayer``,
``Mamba2Mixing``, see docs/hybrids.md) into what FlashTrace, token-wise IFR and the load-time self-check
read: the residual, the span aggregate as a ``SpanPart`` with the per-channel weights folded into the
values, and each sink's own parts. ``GatedAttentionSplit`` also offers the softmax rows; ``ParallelLayer``
joins a softmax attention and a split added to the same residual (Falcon-H1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..contract import SpanPart
from ..kernels.proximity import Workspace
from .softmax import LayerInputs


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


@dataclass(eq=False)
class ParallelLayer:
    """Falcon-H1: softmax attention and a Mamba-2 mixer added to the same residual, as one ``MixingLayer``.

    Heads are the attention heads followed by the Mamba heads; the residual is ``x_in`` (once), the attention
    output bias and the Mamba branch's bias terms.
    """

    index: int
    attention: LayerInputs
    mamba: SplitLayer
    kind = "attention + mamba2"

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads + self.mamba.num_heads

    @property
    def x_in(self) -> torch.Tensor:
        return self.attention.x_in

    @property
    def x_mid(self) -> torch.Tensor:
        return self.attention.x_mid

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        sinks = sinks.to(self.x_in.device)
        biases = self.mamba.split.residual(sinks, include_x_in=False).float()  # type: ignore[attr-defined]
        return self.attention.residual(sinks) + biases.to(self.x_in.device)

    def span_parts(
        self, sinks: torch.Tensor, weights: torch.Tensor, width: int, chunk_size: int, workspace: object = None
    ) -> list[SpanPart]:
        return self.attention.span_parts(sinks, weights, width, chunk_size, workspace) + self.mamba.span_parts(
            sinks, weights, width, chunk_size, workspace
        )

    def token_parts(self, sinks: torch.Tensor, width: int, workspace: object = None) -> torch.Tensor:
        attention = self.attention.token_parts(sinks, width, workspace)  # [H_attn, C, width, D]
        mamba = self.mamba.token_parts(sinks, width).to(attention.device)  # [H_mamba, C, width, D]
        return torch.cat([attention, mamba])

    # the attention half's probabilities, for readers that want softmax rows (the Mamba heads have none)
    def rows(self, sinks: torch.Tensor, width: int | None = None) -> torch.Tensor:
        return self.attention.rows(sinks, width)

    def summed_rows(
        self,
        sinks: torch.Tensor,
        sink_weights: torch.Tensor,
        width: int,
        chunk_size: int,
        workspace: Workspace | None = None,
    ) -> torch.Tensor:
        return self.attention.summed_rows(sinks, sink_weights, width, chunk_size, workspace)
