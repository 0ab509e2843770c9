"""Pure tensor maths of Information Flow Routes: no model, no tokenizer.

Shapes: H query heads, G key/value heads, N positions (sources), C sinks in a chunk, d head width,
D model width. Everything is accumulated in float32 whatever the inputs are.
"""

from __future__ import annotations

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

    With ``u = s ⊙ ᾱ[h,j]·v[h,j]`` (s = sign of Y) each proximity is ``Σ_d u − Σ_d relu(2u − 2|Y|)``
    (see ``proximity``). The sign and ᾱ fold into the small factors of ``v = value · W_O``, so the only
    [H, c, D] work is one batched matmul writing ``2u − 2|Y|`` and a relu-sum, a block of sources at
    a time (small blocks stay in cache).
    """
    heads, _, model_width = out_weight.shape
    groups, width = values.shape[0], values.shape[1]
    target = target.float()
    signed_weight = out_weight.float() * torch.where(target >= 0, 1.0, -1.0)  # [H, d, D]
    weight_sums = signed_weight.sum(-1)  # [H, d]: Σ_d u = (ᾱ·value) · Σ_d W_O'
    minus_twice_abs = (-2 * target.abs()).expand(heads, 1, model_width)  # [H, 1, D]
    chunk = max(1, (block_elements or SPAN_BLOCK_ELEMENTS) // (heads * model_width))
    per_source = torch.empty(width, dtype=torch.float32, device=values.device)  # [N]
    for start in range(0, width, chunk):
        stop = min(start + chunk, width)
        block = values[:, start:stop].float().repeat_interleave(heads // groups, dim=0)  # [H, c, d]
        if alpha_bar is not None:
            block = block * alpha_bar[:, start:stop, None].float()  # ᾱ·value: [H, c, d]
        linear_part = torch.einsum("hcd,hd->hc", block, weight_sums)  # Σ_d u: [H, c]
        overshoot = (workspace or Workspace()).get("span_overshoot", (heads, stop - start, model_width), block.device)
        torch.baddbmm(minus_twice_abs, block, signed_weight, alpha=2.0, out=overshoot)  # 2u − 2|Y|: [H, c, D]
        proximities = (linear_part - overshoot.relu_().sum(-1)).clamp_min_(0.0)  # [H, c]
        per_source[start:stop] = proximities.sum(0)
    return per_source


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
