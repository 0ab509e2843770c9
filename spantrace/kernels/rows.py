"""Attention rows as pure tensor maths: softmax rows of sinks over sources, and their weighted sum over sinks.

The rows are ``softmax(scale · q·k)`` with soft-capping and the causal, sliding-window and chunked masks,
in float32, for a chunk of sinks at a time, so memory stays O(C · N · H). FlashTrace only needs the rows
summed over the sinks, ``ᾱ[h, j] = Σ_i w_i α[h, i, j]``: ``weighted_row_sum`` computes that block by block
(q·k, mask, softmax, weighted sum) without ever holding more than one cache-sized block of rows, each block
only over the sources its sinks can see; ``fused_row_sum`` does it in one reversed flash-attention call when
each row's log-sum-exp is known. Queries, keys and the ``AttentionRule`` come in as tensors and plain data:
no model, adapter or capture here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..contract import AttentionRule
from .proximity import Workspace


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
    # A sink inside a bidirectional block also sees later positions of its block: its row is normalised over
    # all of them, then cut to ``width``.
    seen = min(keys.shape[1], max(width, int(last_visible(sinks, rule).max()) + 1))
    if seen > width:
        return attention_rows(chosen, keys, sinks, rule, seen, queries_selected=True)[..., :width]
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
    for start, end in rule.bidirectional_blocks:  # a sink in a block also sees the block's later positions
        inside = (sinks[:, None] >= start) & (sinks[:, None] < end)  # [C, 1]
        visible |= inside & (sources[None, :] >= start) & (sources[None, :] < end)
    if rule.sliding_window is not None:
        visible &= sources[None, :] > sinks[:, None] - rule.sliding_window
    if rule.attention_chunk is not None:
        visible &= (sources[None, :] // rule.attention_chunk) == (sinks[:, None] // rule.attention_chunk)
    return visible


def last_visible(sinks: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """The last source each sink can see: [C] long (the sink itself, or the last position of its bidirectional
    block)."""
    last = sinks.clone()
    for start, end in rule.bidirectional_blocks:
        last = torch.where((sinks >= start) & (sinks < end), torch.full_like(sinks, end - 1), last)
    return last


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
    if rule.bidirectional_blocks:  # rows that see later positions: the plain row-by-row path, exact
        return _blocked_row_sum(queries, keys, sinks, weights, rule, width, max_sinks or 64, total, channel_weights)
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


def _blocked_row_sum(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sinks: torch.Tensor,
    weights: torch.Tensor,
    rule: AttentionRule,
    width: int,
    chunk: int,
    total: torch.Tensor,
    channel_weights: torch.Tensor | None,
) -> torch.Tensor:
    """``weighted_row_sum`` under bidirectional blocks: ``attention_rows`` (which normalises a block row over its
    later positions too) for ``chunk`` sinks at a time, summed with their weights into ``total``."""
    weights = weights.to(device=keys.device, dtype=torch.float32)
    for start in range(0, sinks.shape[0], chunk):
        part = slice(start, start + chunk)
        rows = attention_rows(queries[:, part], keys, sinks[part], rule, width, queries_selected=True)  # [H, C, W]
        if channel_weights is None:
            total += torch.einsum("c,hcw->hw", weights[part], rows)
        else:
            weighted = weights[part][None, :, None] * channel_weights[:, part]  # [H, C, c]
            total += torch.einsum("hcw,hck->hwk", rows, weighted)
    return total


# The CPU flash-attention kernel behind sdpa, which also returns each row's log-sum-exp.
CPU_FLASH_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def plain_causal(rule: AttentionRule) -> bool:
    """Whether the rule's rows are ``softmax(scale · q·k)`` under the causal mask alone (no soft-cap, window,
    chunk or sink logit): the rows whose normaliser a plain causal sdpa call computes."""
    unmasked = rule.sliding_window is None and rule.attention_chunk is None and not rule.bidirectional_blocks
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
