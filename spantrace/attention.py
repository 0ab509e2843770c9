"""Attention rows recomputed per layer from the captured residual ``x_in``.

The model's own modules give queries and keys (projections, biases, q/k norms, rotary embedding
with its scaling): keys and values once per layer for the whole sequence (kept by the Run between
traces), queries only for the sinks a trace asks about. The rows are then ``softmax(scale · q·k)``
with soft-capping and the causal and sliding-window masks, in float32, for a chunk of sinks at a
time, so memory stays O(C · N · H).

FlashTrace only needs the rows summed over the sinks, ``ᾱ[h, j] = Σ_i w_i α[h, i, j]``:
``weighted_row_sum`` computes that block by block (q·k, mask, softmax, weighted sum) without ever
holding more than one cache-sized block of rows, each block only over the sources its sinks can see.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from .capture import Capture
from .kernels import Workspace, head_value_vectors
from .model.adapter import ArchitectureAdapter, AttentionRule, MixingLayer, SpanPart


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


# Per layer index, what a Run keeps between traces: a softmax-attention layer's keys and values, or the
# whole decomposition of a hybrid's gated-attention, DeltaNet or Mamba-2 layer.
KeyValueCache = dict[int, "tuple[torch.Tensor, torch.Tensor] | MixingLayer"]


@torch.inference_mode()
def layer_inputs(
    adapter: ArchitectureAdapter, capture: Capture, index: int, cache: KeyValueCache | None = None
) -> LayerInputs:
    """Recompute layer ``index``'s keys and values from the captured ``x_in`` (or take them from ``cache``)."""
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
    return LayerInputs(
        index=index,
        rule=adapter.attention_rule(index),
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


def key_value_layer(adapter: ArchitectureAdapter, index: int) -> int:
    """The layer whose keys and values layer ``index`` attends to: itself, unless the adapter says otherwise
    with the optional ``key_value_layer(index)`` (an earlier layer, whose K/V come from its own ``x_in``)."""
    chooser = getattr(adapter, "key_value_layer", None)
    source = index if chooser is None else int(chooser(index))
    if not 0 <= source <= index:
        raise ValueError(f"{adapter.name}: layer {index} cannot reuse the keys and values of layer {source}")
    return source


def mixing_layer(
    adapter: ArchitectureAdapter, capture: Capture, index: int, cache: KeyValueCache | None = None
) -> MixingLayer:
    """Layer ``index`` split over its sources: softmax attention (``LayerInputs``), or whatever the adapter's
    optional ``mixing_layer(index, capture)`` returns for its other layer kinds (kept in ``cache``)."""
    if layer_kind(adapter, index) == "attention":
        return layer_inputs(adapter, capture, index, cache)
    if cache is not None and index in cache:
        return cache[index]  # type: ignore[return-value]
    layer = adapter.mixing_layer(index, capture)  # type: ignore[attr-defined]
    if cache is not None:
        kept = sum(tensor_bytes(entry) for entry in cache.values() if not isinstance(entry, tuple))
        if kept + tensor_bytes(layer) <= HYBRID_CACHE_BYTES:
            cache[index] = layer
    return layer


# A hybrid layer's decomposition holds ~10 tensors of [N, D] size (a softmax layer's keys and values far fewer):
# a Run keeps them between hops and traces while they fit in this many bytes, and rebuilds the rest each time.
HYBRID_CACHE_BYTES = 2 << 30


def tensor_bytes(obj: object, depth: int = 2) -> int:
    """Bytes of the tensors an object holds in its attributes (and, ``depth`` levels down, its parts')."""
    total = 0
    for value in getattr(obj, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            total += tensor_bytes(value, depth - 1)
    return total


def layer_kind(adapter: ArchitectureAdapter, index: int) -> str:
    """What mixes tokens in layer ``index``: "attention" (softmax), or the adapter's own ``layer_kind``."""
    kind = getattr(adapter, "layer_kind", None)
    return "attention" if kind is None else str(kind(index))


def iter_layers(
    adapter: ArchitectureAdapter, capture: Capture, cache: KeyValueCache | None = None
) -> Iterator[MixingLayer]:
    """Every layer, split over its sources, in order; ``cache`` keeps what can be reused between traces."""
    for index in range(capture.num_layers):
        yield mixing_layer(adapter, capture, index, cache)


def attention_rows(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sinks: torch.Tensor,
    rule: AttentionRule,
    width: int | None = None,
    *,
    queries_selected: bool = False,
) -> torch.Tensor:
    """Attention probabilities of sinks to sources: [H, C, width] float32.

    queries: [H, N, d] of every position (or [H, C, d] of the sinks with ``queries_selected``);
    keys: [G, N, d]; sinks: [C] positions; width: how many sources to return (default: up to the
    last sink; later sources get probability 0 anyway).
    """
    sinks = sinks.to(queries.device)
    if width is None:
        width = int(sinks.max()) + 1
    chosen = queries if queries_selected else queries[:, sinks]  # [H, C, d]
    logits = attention_logits(chosen, keys, sinks, rule, width)
    # softmax in place (one [H, C, width] buffer instead of three); every row sees its own sink
    top = logits.amax(dim=-1, keepdim=True)  # [H, C, 1]
    if rule.sink_logits is None:
        logits.sub_(top).exp_()
        return logits.div_(logits.sum(dim=-1, keepdim=True))
    # A sink logit joins the denominator: exp(s_h) / (Σ_j exp(l_j) + exp(s_h)) is the mass no source gets.
    sink_logits = rule.sink_logits.to(device=logits.device, dtype=torch.float32)[:, None, None]  # [H, 1, 1]
    top = torch.maximum(top, sink_logits)
    logits.sub_(top).exp_()
    return logits.div_(logits.sum(dim=-1, keepdim=True) + (sink_logits - top).exp())


def attention_logits(
    queries: torch.Tensor, keys: torch.Tensor, sinks: torch.Tensor, rule: AttentionRule, width: int
) -> torch.Tensor:
    """The logits of sinks ``[C]`` (their queries ``[H, C, d]``) to sources ``0…width−1``: ``scale · q·k``,
    soft-capped, −inf where a sink cannot see a source. [H, C, width] float32."""
    heads, groups = rule.num_heads, rule.num_kv_heads
    grouped = queries.float().reshape(groups, heads // groups, *queries.shape[1:])  # [G, H/G, C, d]
    logits = torch.einsum("gqcd,gnd->gqcn", grouped, keys[:, :width].float())
    logits = logits.reshape(heads, sinks.shape[0], width).mul_(rule.scaling)  # [H, C, width]
    if rule.softcap is not None:
        logits.div_(rule.softcap).tanh_().mul_(rule.softcap)
    return logits.masked_fill_(~visible_sources(sinks, width, rule)[None], float("-inf"))


def visible_sources(sinks: torch.Tensor, width: int, rule: AttentionRule) -> torch.Tensor:
    """[C, width] bool: which sources each sink attends to (causal, sliding window, chunked attention)."""
    sources = torch.arange(width, device=sinks.device)
    visible = sources[None, :] <= sinks[:, None]  # [C, width]
    if rule.sliding_window is not None:
        visible &= sources[None, :] > sinks[:, None] - rule.sliding_window
    if rule.attention_chunk is not None:
        visible &= (sources[None, :] // rule.attention_chunk) == (sinks[:, None] // rule.attention_chunk)
    return visible


# Elements of one chunk's [H, C, width] rows: ~8 MB fp32 keeps them in cache and off the page-fault path.
ROW_BLOCK_ELEMENTS = 1 << 21


def row_chunk_size(chunk_size: int, heads: int, width: int) -> int:
    """The sink chunk to use: at most ``chunk_size``, and small enough that [H, C, width] stays ~8 MB."""
    return max(1, min(chunk_size, ROW_BLOCK_ELEMENTS // max(1, heads * width)))


def first_visible(sinks: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """The first source each sink can see: [C] long (the last is the sink itself).

    A sliding window starts it at ``i − window + 1``, a chunked attention at ``i − i mod chunk``.
    For ascending sinks it is non-decreasing.
    """
    first = torch.zeros_like(sinks)
    if rule.sliding_window is not None:
        first = torch.maximum(first, sinks - rule.sliding_window + 1)
    if rule.attention_chunk is not None:
        first = torch.maximum(first, sinks - sinks % rule.attention_chunk)
    return first


def row_blocks(
    sinks: list[int], first: list[int], heads: int, block_elements: int, max_sinks: int
) -> Iterator[tuple[int, int, int, int]]:
    """Consecutive blocks of ascending ``sinks`` as ``(a, b, lo, hi)``: sinks ``a…b−1`` and the sources
    ``lo…hi−1`` any of them can see (``first`` is each sink's first visible source). A block's rows,
    ``[H, b − a, hi − lo]``, hold at most ``block_elements`` (or one row, when a single row is wider).
    Causal tiling: a block of early sinks is narrow, so the rows cost ≈ half of M × N for a whole generation.
    """
    count, start = len(sinks), 0
    while start < count:
        lo = first[start]
        size = min(max_sinks, count - start, max(1, block_elements // (heads * (sinks[start] + 1 - lo))))
        # the block's last sink sets its width; shrinking the block only narrows it, so one correction suffices
        size = max(1, min(size, block_elements // (heads * (sinks[start + size - 1] + 1 - lo))))
        yield start, start + size, lo, sinks[start + size - 1] + 1
        start += size


def mask_invisible_(
    logits: torch.Tensor, sinks: torch.Tensor, first: torch.Tensor, lo: int, edges: tuple[int, int]
) -> None:
    """Set to −inf the logits ``[H, C, S]`` of sources ``lo…lo+S−1`` that sinks ``[C]`` cannot see.

    ``edges = (first sink, first visible source of the last sink)``: only the columns after the first
    sink (causal) and before the last sink's first visible source (window, chunk) can hold a hidden
    source, so only those two slices are touched.
    """
    width = logits.shape[-1]
    after = edges[0] + 1 - lo  # columns ≥ after lie past the block's first sink
    if after < width:
        sources = torch.arange(lo + after, lo + width, device=logits.device)
        logits[:, :, after:].masked_fill_(sources[None, :] > sinks[:, None], float("-inf"))
    before = edges[1] - lo  # columns < before lie before the last sink's first visible source
    if before > 0:
        sources = torch.arange(lo, lo + before, device=logits.device)
        logits[:, :, :before].masked_fill_(sources[None, :] < first[:, None], float("-inf"))


def weighted_row_sum(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sinks: torch.Tensor,
    weights: torch.Tensor,
    rule: AttentionRule,
    width: int,
    *,
    block_elements: int = ROW_BLOCK_ELEMENTS,
    max_sinks: int | None = None,
    workspace: Workspace | None = None,
    channel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ᾱ[h, j] = Σ_i w_i α[h, i, j]``: attention rows summed over weighted sinks, [H, width] float32.

    With ``channel_weights [H, M, c]`` (a per-sink, per-channel factor such as an output gate) the sum keeps
    the channels: ``Σ_i w_i α[h, i, j] · channel_weights[h, i]``, [H, width, c].

    queries: [H, M, d] of the sinks; keys: [G, N, d] (N ≥ width); sinks: [M] positions in ascending
    order; weights: [M]. The same probabilities as ``attention_rows`` (softmax of ``scale · q·k``,
    soft-capped, with the causal, sliding-window and chunk masks, and a per-head sink logit joining
    the denominator), computed a block of sinks at a time (see ``row_blocks``): q·k into one reused
    buffer, the masks on the few columns that need them, a softmax into a second buffer, and its
    weighted sum over the block's sinks as one matrix product. M × N rows never exist at once.
    """
    heads, groups = rule.num_heads, rule.num_kv_heads
    per_group, head_dim = heads // groups, queries.shape[-1]
    device = keys.device
    workspace = workspace or Workspace()
    channels = () if channel_weights is None else (channel_weights.shape[-1],)
    total = torch.zeros(heads, width, *channels, dtype=torch.float32, device=device)
    if channel_weights is not None:
        channel_weights = channel_weights.to(device=device, dtype=torch.float32)
    if sinks.numel() == 0:
        return total
    # scale (and the soft-cap's 1/cap) folded into the queries: [H, M, d] instead of a pass over every logit
    factor = rule.scaling / rule.softcap if rule.softcap is not None else rule.scaling
    queries = queries.float() * factor  # [H, M, d]
    keys_by_column = keys[:, :width].float().contiguous().transpose(1, 2)  # [G, d, width]
    sinks = sinks.to(device)
    first = first_visible(sinks, rule)  # [M]
    weights = weights.to(device=device, dtype=torch.float32)  # [M]
    sink_logits = rule.sink_logits.to(device=device, dtype=torch.float32) if rule.sink_logits is not None else None
    sink_list, first_list = sinks.tolist(), first.tolist()
    for a, b, lo, hi in row_blocks(sink_list, first_list, heads, block_elements, max_sinks or len(sink_list)):
        count, span = b - a, hi - lo
        block_queries = queries[:, a:b].reshape(groups, per_group * count, head_dim)  # [G, H/G·C, d]
        logits = workspace.get("row_logits", (groups, per_group * count, span), device)
        torch.bmm(block_queries, keys_by_column[:, :, lo:hi], out=logits)
        logits = logits.view(heads, count, span)  # [H, C, S]
        if rule.softcap is not None:
            logits.tanh_().mul_(rule.softcap)
        mask_invisible_(logits, sinks[a:b], first[a:b], lo, (sink_list[a], first_list[b - 1]))
        row_weights = weights[a:b].expand(heads, count)  # [H, C]
        if sink_logits is not None:
            row_max = logits.amax(-1)  # [H, C]
        probabilities = workspace.get("row_probabilities", (heads, count, span), device)
        torch.softmax(logits, dim=-1, out=probabilities)  # every row sees its own sink: no empty row
        if sink_logits is not None:
            # p = e^(l−m) / (Z + e^(s−m)) = softmax · 1 / (1 + e^(s−m) / Z), and the softmax's largest entry is 1 / Z
            damping = 1.0 + torch.exp(sink_logits[:, None] - row_max) * probabilities.amax(-1)  # [H, C]
            row_weights = row_weights / damping
        if channel_weights is None:
            total[:, lo:hi] += torch.bmm(row_weights[:, None, :], probabilities)[:, 0]  # Σ_i w_i α[h, i, j]
        else:  # Σ_i α[h, i, j] · (w_i channel_weights[h, i]): [H, S, c]
            weighted = row_weights[..., None] * channel_weights[:, a:b]  # [H, C, c]
            total[:, lo:hi] += torch.bmm(probabilities.transpose(1, 2), weighted)
    return total


# The CPU flash-attention kernel behind sdpa, which also returns each row's log-sum-exp.
CPU_FLASH_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def plain_causal(rule: AttentionRule) -> bool:
    """Whether the rule's rows are ``softmax(scale · q·k)`` under the causal mask alone (no soft-cap, window,
    chunk or sink logit): the rows whose normaliser a plain causal sdpa call computes."""
    unmasked = rule.sliding_window is None and rule.attention_chunk is None
    return unmasked and rule.softcap is None and rule.sink_logits is None


def fused_row_sum_applies(
    sinks: torch.Tensor, weights: torch.Tensor, rule: AttentionRule, device: torch.device
) -> bool:
    """Whether ``fused_row_sum`` can compute these rows: a plain causal rule on the CPU, positive weights, and
    sinks filling at least half of the positions from the first to the last (the others cost a slot each)."""
    if device.type != "cpu" or not plain_causal(rule) or sinks.numel() == 0 or bool((weights <= 0).any()):
        return False
    return 2 * sinks.numel() >= int(sinks[-1]) - int(sinks[0]) + 1


def fused_row_sum(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sinks: torch.Tensor,
    weights: torch.Tensor,
    logsumexp: torch.Tensor,
    rule: AttentionRule,
    width: int,
) -> torch.Tensor:
    """``ᾱ[h, j] = Σ_i w_i α[h, i, j]`` in one flash-attention call, given each sink row's log-sum-exp: [H, width].

    With ``s_ij = scale · q_i·k_j`` and ``α_ij = exp(s_ij − lse_i)`` (lse from the forward pass), the sum over
    sinks is an attention *read backwards*: source j asks, sink i answers. The kernel, called with the source
    keys as its queries and the sink queries as its keys, returns for each source ``λ_j = log Σ_i exp(s_ij)``
    and ``o_j = Σ_i exp(s_ij − λ_j) v_i``; with the value ``v_i = w_i exp(c − lse_i)`` in one channel,
    ``exp(λ_j − c) · o_j = Σ_i w_i exp(s_ij − lse_i) = ᾱ_j``. Causality reversed (source j sees the sinks at or
    after it) becomes the kernel's own causal mask once both sequences run backwards: slot ``u = last − p``
    holds the sink at position p, a slot without a sink holds a zero value. ``c`` (per head, the smallest
    ``lse_i − log w_i``) keeps every value in (0, 1]. Scores, weights and the result stay in float32; q·k,
    the exponentials and the sums are the kernel's, fused, and the rows never exist.

    queries: [H, M, d] of the sinks; keys: [G, N, d]; sinks: [M] ascending positions; weights: [M] > 0;
    logsumexp: [H, N] of every position's row (only the sinks' are read). See ``fused_row_sum_applies``.
    """
    heads, groups = rule.num_heads, rule.num_kv_heads
    head_dim = queries.shape[-1]
    device = keys.device
    total = torch.zeros(heads, width, dtype=torch.float32, device=device)
    first, last = int(sinks[0]), int(sinks[-1])
    slots = last - first + 1  # sink slots, from the last sink (slot 0) back to the first
    sinks = sinks.to(device)
    logs = logsumexp.to(device=device, dtype=torch.float32)[:, sinks] - weights.float().log()[None]  # [H, M]
    shift = logs.amin(-1, keepdim=True)  # c per head: every value exp(c − lse_i + log w_i) ≤ 1
    positions = last - sinks  # the slot of each sink
    sink_queries = torch.zeros(heads, slots, head_dim, dtype=torch.float32, device=device)
    sink_queries[:, positions] = queries.float()
    sink_values = torch.zeros(heads, slots, head_dim, dtype=torch.float32, device=device)
    sink_values[:, positions, 0] = torch.exp(shift - logs)
    source_keys = keys[:, : last + 1].float().flip(1)  # source j at row last − j
    if groups != heads:
        source_keys = source_keys.repeat_interleave(heads // groups, dim=0)
    output, log_sums = CPU_FLASH_ATTENTION(
        source_keys[None], sink_queries[None], sink_values[None], 0.0, True, scale=rule.scaling
    )
    # o_j ≥ 0 (0 where no weighted sink sees j): log 0 = −inf gives ᾱ_j = 0
    summed = torch.exp(log_sums[0] - shift + output[0, :, :, 0].log())  # [H, last + 1], reversed
    total[:, : last + 1] = summed.flip(1)
    return total


def sink_chunks(sinks: torch.Tensor, chunk_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Consecutive chunks of ``sinks`` with their slice in the original order."""
    for start in range(0, sinks.shape[0], chunk_size):
        part = slice(start, min(start + chunk_size, sinks.shape[0]))
        yield part, sinks[part]
