"""Pure tensor maths of Information Flow Routes: no model, no tokenizer.

Shapes: H query heads, G key/value heads, N positions (sources), C sinks in a chunk, d head width,
D model width. Everything is accumulated in float32 whatever the inputs are.
"""

from __future__ import annotations

import bisect

import torch

# Elements per temporary [.., D] block; bounds peak memory of the chunked kernels (~128 MB fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 25
# Span kernels work in blocks of ~16 MB fp32: big enough for efficient matmuls, small enough for cache.
SPAN_BLOCK_ELEMENTS = 1 << 22


class Workspace:
    """Scratch memory reused across the blocks and layers of one trace.

    Large temporaries allocated and freed block after block are handed back to the OS each time and
    page-faulted in again; keeping them in a few named buffers avoids that (it was ~3× on token-wise IFR).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 tensor of ``shape`` (uninitialised), backed by the buffer ``name``."""
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.device != device:
            buffer = torch.empty(numel, dtype=torch.float32, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def proximity(contribution: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``max(0, |y|_1 − |y − z|_1)`` over the last axis, broadcasting ``z [..., D]`` against ``y [..., D]``.

    Term by term, with ``s = sign(y)`` (+1 at 0) and ``u = s·z``: ``|y| − |y − z| = min(u, 2|y| − u)``.
    That is exact where the naive difference of two large L1 norms would cancel: for a contribution
    that does not overshoot the target (``u ≤ |y|``) the term is ``u`` itself.
    """
    contribution = contribution.float()
    target = target.float()
    signed = torch.where(target >= 0, contribution, -contribution)  # u
    terms = torch.minimum(signed, 2 * target.abs() - signed)
    return terms.sum(-1).clamp_min(0.0)


def head_value_vectors(values: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
    """``v[h, j] = values[kv(h), j] · W_O^h``: per-head, per-source vectors in model space.

    values: [G, N, d] (V bias included); out_weight: [H, d, D] -> [H, N, D] float32.
    """
    heads, groups = out_weight.shape[0], values.shape[0]
    expanded = values.float().repeat_interleave(heads // groups, dim=0)  # [H, N, d]
    return torch.bmm(expanded, out_weight.float())  # [H, N, D]


def span_edges(
    alpha_bar: torch.Tensor,
    values: torch.Tensor,
    out_weight: torch.Tensor,
    target: torch.Tensor,
    residual: torch.Tensor,
    *,
    block_elements: int | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, float]:
    """One layer's edge weights from every source to an aggregated sink set.

    alpha_bar: [H, N] summed (weighted) attention of the sinks to each source; values: [G, N, d];
    out_weight: [H, d, D]; target ``Y_S`` and residual ``R_S``: [D].
    Returns ``e [N]`` with ``e_j = Σ_h p[h, j] / (Σ_{j', h} p + r)`` and the denominator (0 → e = 0).
    """
    per_source = span_proximities(
        alpha_bar, values, out_weight, target, block_elements=block_elements, workspace=workspace
    )
    return normalised_edges(per_source, target, residual)


def span_proximities(
    alpha_bar: torch.Tensor | None,
    values: torch.Tensor,
    out_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    block_elements: int | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """``p_j = Σ_h prox(ᾱ[h, j] · v[h, j], Y)`` for every source: [N] float32.

    alpha_bar: [H, N], or None for all ones (a per-channel weight already folded into the values);
    values: [G, N, d]; out_weight: [H, d, D]; target ``Y``: [D].

    With ``a = ᾱ[h,j]·value[h,j]`` and ``u = s ⊙ a·W_O^h`` (s = sign of Y) each proximity is
    ``Σ_d u − Σ_d relu(u − |Y|)·2``, i.e. ``min(u, 2|Y| − u)`` term by term (see ``proximity``). The linear
    part ``Σ_d u = a · Σ_d W_O'`` costs O(d) per head and source. The overshoot part is 0 in every channel
    where ``u_d ≤ |Y_d|``, and Cauchy–Schwarz bounds ``u_d ≤ ‖a‖·‖W_O'^h[:, d]‖``: channel d can overshoot
    only where ``‖a‖ > |Y_d| / ‖W_O'^h[:, d]‖``. So the channels are sorted by that ratio, each source gets
    the number of channels its largest ``‖a‖`` over heads could reach, and the ``[H, c, K]`` products run
    only over those first K channels, for blocks of sources with similar K. A typical source carries a small
    share of Y and needs few channels (or none); the few large ones (attention sinks, the span's own tokens)
    get all D. Exact: a skipped channel's overshoot is 0 by the bound (kept with a relative margin of 1e-4
    against rounding).
    """
    heads, _, model_width = out_weight.shape
    groups, width = values.shape[0], values.shape[1]
    per_group = heads // groups
    device = values.device
    target = target.float()
    signed_weight = out_weight.float() * torch.where(target >= 0, 1.0, -1.0)  # W_O' = s ⊙ W_O: [H, d, D]
    values = values[:, :width].float()
    value_norms = values.norm(dim=-1).repeat_interleave(per_group, dim=0)  # ‖value[h, j]‖: [H, N]
    sums = torch.einsum("gnd,ghd->ghn", values, signed_weight.sum(-1).view(groups, per_group, -1))
    linear_part = sums.reshape(heads, width)  # value · Σ_d W_O': [H, N]
    if alpha_bar is not None:
        alpha = alpha_bar[:, :width].float()
        linear_part = linear_part * alpha
        value_norms = value_norms * alpha.abs()
    # channel d can overshoot for source j only if max_h ‖a[h, j]‖ · max_h ‖W_O'^h[:, d]‖ > |Y_d|
    column_norms = out_weight.float().norm(dim=1).amax(0)  # [D] (the sign does not change a norm)
    reach = torch.where(column_norms > 0, target.abs() / column_norms, torch.inf)  # a channel no head writes: never
    order = reach.argsort()
    bound = value_norms.amax(0) * (1 + 1e-4)  # [N]
    needed = torch.searchsorted(reach[order].contiguous(), bound)  # channels each source may overshoot: [N]
    overshoot_sums = torch.zeros(heads, width, dtype=torch.float32, device=device)  # Σ_d relu(2u − 2|Y|)
    ranked = needed.argsort(descending=True)
    needed_list = needed[ranked].tolist()
    descending = [-value for value in needed_list]  # ascending, for bisect
    count = bisect.bisect_left(descending, 0)  # the sources that may overshoot somewhere (needed > 0)
    if count == 0:
        return linear_part.clamp_min_(0.0).sum(0)
    columns = order[: needed_list[0]]  # every channel any source may overshoot, by increasing reach
    sorted_weight = signed_weight.index_select(2, columns)  # [H, d, K]
    minus_twice_abs = -2 * target.abs().index_select(0, columns)  # [K]
    budget = (block_elements or SPAN_BLOCK_ELEMENTS) // heads
    workspace = workspace or Workspace()
    start = 0
    while start < count:
        channels = needed_list[start]  # the block's widest source
        # sources needing at least half as many channels (a block wastes at most half its products), in budget
        similar = bisect.bisect_right(descending, -((channels + 1) // 2), start, count)
        stop = min(similar, start + max(1, budget // channels))
        sources = ranked[start:stop]
        block = values.index_select(1, sources).repeat_interleave(per_group, dim=0)  # [H, c, d]
        if alpha_bar is not None:
            block = block * alpha.index_select(1, sources)[..., None]
        overshoot = workspace.get("span_overshoot", (heads, stop - start, channels), device)
        bias = minus_twice_abs[:channels].expand(heads, 1, channels)
        torch.baddbmm(bias, block, sorted_weight[:, :, :channels], alpha=2.0, out=overshoot)  # 2u − 2|Y|
        overshoot_sums[:, sources] = overshoot.relu_().sum(-1)
        start = stop
    return (linear_part - overshoot_sums).clamp_min_(0.0).sum(0)


def normalised_edges(
    per_source: torch.Tensor, target: torch.Tensor, residual: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """``e_j = p_j / (Σ_j' p_j' + prox(R, Y))`` and that denominator; all zeros when it is 0."""
    denominator = float(per_source.sum() + proximity(residual, target))
    if denominator <= 0.0:
        return torch.zeros_like(per_source), 0.0
    return per_source / denominator, denominator


def token_edges(
    alpha: torch.Tensor,
    head_vectors: torch.Tensor,
    targets: torch.Tensor,
    residuals: torch.Tensor,
    *,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """One layer's edge weights from every source to each of C sinks separately (token-wise IFR).

    alpha: [H, C, N] attention rows (already scaled per sink where a sandwich norm needs it);
    head_vectors: [H, N, D]; targets ``x_mid`` and residuals: [C, D]. Returns [C, N].
    """
    workspace = workspace or Workspace()
    heads, sinks, width = alpha.shape
    parts = workspace.get("token_signed", (heads, sinks, width, head_vectors.shape[-1]), alpha.device)
    torch.mul(alpha.float()[..., None], head_vectors[:, None], out=parts)  # z: [H, C, N, D]
    return part_edges(parts, targets, residuals, workspace=workspace)


def part_edges(
    parts: torch.Tensor, targets: torch.Tensor, residuals: torch.Tensor, *, workspace: Workspace | None = None
) -> torch.Tensor:
    """Edge weights from per-head, per-source parts of each sink's update: ``parts [H, C, N, D]`` float32
    (overwritten), targets ``x_mid`` and residuals ``[C, D]`` -> ``[C, N]``.

    Proximity as in ``proximity`` (``min(u, 2|y| − u)`` with ``u = sign(y)·z``), in two reused buffers.
    """
    workspace = workspace or Workspace()
    targets = targets.float()
    signed = parts
    signed.mul_(torch.where(targets >= 0, 1.0, -1.0)[None, :, None, :])  # u = sign(y)·z
    other = workspace.get("token_other", tuple(parts.shape), parts.device)
    torch.sub((2 * targets.abs())[None, :, None, :], signed, out=other)  # 2|y| − u
    torch.minimum(signed, other, out=other)
    per_head = other.sum(-1).clamp_min_(0.0)  # [H, C, N]
    per_source = per_head.sum(0)  # [C, N]
    denominator = per_source.sum(-1) + proximity(residuals, targets)  # [C]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator[:, None] > 0, per_source / safe[:, None], torch.zeros_like(per_source))
