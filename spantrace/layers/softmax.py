"""Softmax attention as a mixing layer: ``LayerInputs``, recomputed per layer from the captured residual ``x_in``.

The model's own modules give queries and keys (projections, biases, q/k norms, rotary embedding with its
scaling): keys and values once per layer for the whole sequence (kept by the Run between traces), queries
only for the sinks a trace asks about. The rows themselves and their weighted sums are the pure kernels of
``spantrace.kernels.rows``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from ..capture import Capture
from ..contract import ArchitectureAdapter, AttentionRule, MixingLayer, SpanPart
from ..kernels.proximity import Workspace, head_value_vectors
from ..kernels.rows import (
    attention_logits,
    attention_rows,
    fused_row_sum,
    fused_row_sum_applies,
    plain_causal,
    weighted_row_sum,
)
from ..offload import materialized


@dataclass(frozen=True, eq=False)
class LayerInputs:
    """Everything one layer contributes to attribution, recomputed from the capture."""

    index: int
    rule: AttentionRule
    keys: torch.Tensor  # [G, N, d], as the model multiplies them (rotary applied)
    values: torch.Tensor  # [G, N, d], V bias included
    out_weight: torch.Tensor  # [H, d, D] float32; a sandwich norm's gain is folded in
    out_bias: torch.Tensor | None  # [D] float32 (gain folded in), kept with the residual
    sink_scale: torch.Tensor | None  # [N] float32: sandwich norm scale 1/rms(a_i), or None
    x_in: torch.Tensor  # [N, D] float32
    x_mid: torch.Tensor  # [N, D] float32
    adapter: ArchitectureAdapter
    model_x_in: torch.Tensor  # [N, D] in the model's dtype and device, for recomputing queries
    # [H, N] float32 log-sum-exp of every row, from the capture's forward pass (None where it was not kept)
    logsumexp: torch.Tensor | None = None
    kind = "attention"

    @property
    def num_heads(self) -> int:
        return self.rule.num_heads

    @torch.inference_mode()
    def sink_queries(self, sinks: torch.Tensor) -> torch.Tensor:
        """Queries of the given sink positions only: [H, C, d]."""
        sinks = sinks.to(self.model_x_in.device)
        return self.adapter.queries(self.index, self.model_x_in[sinks], sinks, self.model_x_in.shape[0])

    @cached_property
    def queries(self) -> torch.Tensor:
        """Queries of every position, [H, N, d] (for methods that need all rows)."""
        return self.sink_queries(torch.arange(self.model_x_in.shape[0]))

    def rows(self, sinks: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Attention probabilities of ``sinks [C]`` to sources ``0…width−1``: [H, C, width] float32."""
        return attention_rows(self.sink_queries(sinks), self.keys, sinks, self.rule, width, queries_selected=True)

    def summed_rows(
        self,
        sinks: torch.Tensor,
        sink_weights: torch.Tensor,
        width: int,
        chunk_size: int,
        workspace: Workspace | None = None,
    ) -> torch.Tensor:
        """``ᾱ[h, j] = Σ_i w_i α[h, i, j]`` over the sinks ``[M]`` with weights ``[M]``: [H, width] float32.

        Sinks of weight 0 add nothing and are skipped (no query, no row); the rest are taken in position
        order, at most ``chunk_size`` at a time (see ``weighted_row_sum``).
        """
        positions, weights = weighted_sinks(sinks, sink_weights, self.keys.device)
        fused = fused_row_sum_applies(positions, weights, self.rule, self.keys.device)
        if fused and self._checked_logsumexp is not None:
            queries = self.sink_queries(positions)
            return fused_row_sum(queries, self.keys, positions, weights, self._checked_logsumexp, self.rule, width)
        return weighted_row_sum(
            self.sink_queries(positions),
            self.keys,
            positions,
            weights,
            self.rule,
            width,
            max_sinks=chunk_size,
            workspace=workspace,
        )

    def span_parts(
        self, sinks: torch.Tensor, weights: torch.Tensor, width: int, chunk_size: int, workspace: Workspace
    ) -> list[SpanPart]:
        """The sink set's update as one SpanPart: ``ᾱ`` summed over the sinks (a sandwich norm's per-sink
        scale folded into the weights) and the values of sources ``0…width−1``."""
        positions = sinks.to(self.keys.device)
        weights = weights.to(device=self.keys.device, dtype=torch.float32)
        if self.sink_scale is not None:
            weights = weights * self.sink_scale[positions]
        alpha_bar = self.summed_rows(positions, weights, width, chunk_size, workspace)  # [H, width]
        return [SpanPart(alpha_bar, self.values[:, :width], self.out_weight)]

    def token_parts(self, sinks: torch.Tensor, width: int, workspace: Workspace | None = None) -> torch.Tensor:
        """``α[h, i, j] · s_i · v[h, j]`` for each sink: [H, C, width, D] float32 (in ``workspace`` if given)."""
        sinks = sinks.to(self.keys.device)
        alpha = self.rows(sinks, width)  # [H, C, width]
        if self.sink_scale is not None:
            alpha = alpha * self.sink_scale[sinks][None, :, None]
        vectors = self._head_vectors.get(width)
        if vectors is None:  # once per layer and width: every chunk of sinks reads the same vectors
            self._head_vectors.clear()
            vectors = self._head_vectors[width] = head_value_vectors(self.values[:, :width], self.out_weight)
        shape = (alpha.shape[0], alpha.shape[1], width, vectors.shape[-1])
        out = (workspace or Workspace()).get("token_parts", shape, alpha.device)
        return torch.mul(alpha[..., None], vectors[:, None], out=out)

    @cached_property
    def _head_vectors(self) -> dict[int, torch.Tensor]:
        return {}

    @cached_property
    def _checked_logsumexp(self) -> torch.Tensor | None:
        """The captured log-sum-exp, if it is this layer's: recomputed here for a few rows (first, last and two
        between) from the recomputed queries and keys, and kept only where every one agrees within
        ``LOGSUMEXP_TOLERANCE``. A mismatch (a query detail the forward pass had and the rule has not) sends
        the rows back to ``weighted_row_sum``, which needs no normaliser from outside."""
        if self.logsumexp is None or not plain_causal(self.rule):
            return None
        count = self.keys.shape[1]
        if self.logsumexp.shape != (self.num_heads, count):
            return None
        probes = torch.unique(torch.tensor([0, count // 3, (2 * count) // 3, count - 1])).to(self.keys.device)
        logits = attention_logits(self.sink_queries(probes), self.keys, probes, self.rule, count)  # [H, P, N]
        expected = torch.logsumexp(logits, dim=-1)  # [H, P]
        kept = self.logsumexp.to(device=expected.device, dtype=torch.float32)
        if not bool(((kept[:, probes] - expected).abs() <= LOGSUMEXP_TOLERANCE).all()):
            return None
        return kept

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        """Residual part of each sink's ``x_mid``: ``x_in`` plus the (normed) output bias. [C, D]."""
        residual = self.x_in[sinks]
        if self.out_bias is not None:
            scale = self.sink_scale[sinks, None] if self.sink_scale is not None else 1.0
            residual = residual + scale * self.out_bias
        return residual


# How far a captured row log-sum-exp may lie from the one recomputed here (float32 rounding of two orders of
# summation is ~1e-6): the rows' relative error stays below this.
LOGSUMEXP_TOLERANCE = 1e-4


def weighted_sinks(
    sinks: torch.Tensor, weights: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sinks a weighted row sum reads: weight-0 sinks dropped (they add nothing), the rest in position
    order as ``weighted_row_sum`` wants them; positions ``[M']`` and float32 weights ``[M']`` on ``device``."""
    positions = sinks.to(device)
    weights = weights.to(device=device, dtype=torch.float32)
    kept = weights != 0
    positions, weights = positions[kept], weights[kept]
    order = positions.argsort(stable=True)
    return positions[order], weights[order]


# Per layer index, what a Run keeps between traces: a softmax-attention layer's keys and values (under the index
# of the layer they come from, see ``key_value_layer``), or the whole decomposition of a hybrid's gated-attention,
# DeltaNet or Mamba-2 layer (``spantrace.layers.dispatch.mixing_layer`` decides which fit).
KeyValueCache = dict[int, "tuple[torch.Tensor, torch.Tensor] | MixingLayer"]


@torch.inference_mode()
def layer_inputs(
    adapter: ArchitectureAdapter, capture: Capture, index: int, cache: KeyValueCache | None = None
) -> LayerInputs:
    """Recompute layer ``index``'s keys and values from the captured ``x_in`` (or take them from ``cache``)."""
    adapter = positioned(adapter, capture)
    parameter = next(adapter.layer(index).parameters())
    model_x_in = capture.x_in[index].to(device=parameter.device, dtype=parameter.dtype)
    # A layer may attend to an earlier layer's keys and values (Gemma 4's KV sharing): they are that layer's,
    # computed from its own x_in, and cached under its index so both layers share one copy.
    source = key_value_layer(adapter, index)
    if cache is not None and source in cache:
        keys, values = cache[source]
    elif source == index:
        keys, values = adapter.keys_values(index, model_x_in)
    else:
        with materialized(adapter.layer(source)):  # that layer's weights, if accelerate offloaded them
            source_parameter = next(adapter.layer(source).parameters())
            source_x_in = capture.x_in[source].to(device=source_parameter.device, dtype=source_parameter.dtype)
            keys, values = adapter.keys_values(source, source_x_in)
    if cache is not None:
        cache[source] = (keys, values)
    keys, values = keys.to(parameter.device), values.to(parameter.device)  # no-op unless the source sits elsewhere
    out_weight, out_bias = adapter.output_projection(index)
    out_weight = out_weight.float()
    out_bias = out_bias.float() if out_bias is not None else None
    sandwich = adapter.sandwich_norm(index)
    sink_scale = None
    if sandwich is not None:
        gain = sandwich.gain.to(out_weight.device)
        out_weight = out_weight * gain
        out_bias = out_bias * gain if out_bias is not None else None
        sink_scale = capture.sandwich_scale[index].to(out_weight.device).float()
    rule = adapter.attention_rule(index)
    if capture.bidirectional_blocks:  # the run's image blocks, where the model's mask let rows see later positions
        rule = replace(rule, bidirectional_blocks=capture.bidirectional_blocks)
    return LayerInputs(
        index=index,
        rule=rule,
        keys=keys,
        values=values,
        out_weight=out_weight,
        out_bias=out_bias,
        sink_scale=sink_scale,
        x_in=capture.x_in[index].to(out_weight.device).float(),
        x_mid=capture.x_mid[index].to(out_weight.device).float(),
        adapter=adapter,
        model_x_in=model_x_in,
        logsumexp=capture.logsumexp[index],
    )


def positioned(adapter: ArchitectureAdapter, capture: Capture) -> ArchitectureAdapter:
    """The adapter reading the position ids the capture's forward pass used (a vision-language model's M-RoPE
    positions, through its optional ``at_positions``); ``adapter`` itself on a text-only run."""
    binder = getattr(adapter, "at_positions", None)
    if capture.position_ids is None or binder is None:
        return adapter
    return binder(capture.position_ids)


def key_value_layer(adapter: ArchitectureAdapter, index: int) -> int:
    """The layer whose keys and values layer ``index`` attends to: itself, unless the adapter says otherwise
    with the optional ``key_value_layer(index)`` (an earlier layer, whose K/V come from its own ``x_in``)."""
    chooser = getattr(adapter, "key_value_layer", None)
    source = index if chooser is None else int(chooser(index))
    if not 0 <= source <= index:
        raise ValueError(f"{adapter.name}: layer {index} cannot reuse the keys and values of layer {source}")
    return source
