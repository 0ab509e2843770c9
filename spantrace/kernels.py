"""Pure tensor maths of Information Flow Routes: no model, no tokenizer.

Shapes: H query heads, G key/value heads, N positions (sources), C sinks in a chunk, d head width,
D model width. Everything is accumulated in float32 whatever the inputs are.
"""

from __future__ import annotations

import torch

# Elements per temporary [.., D] block; bounds peak memory of the chunked kernels (~128 MB fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 25


def proximity(contribution: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``max(0, |y|_1 − |y − z|_1)`` over the last axis, broadcasting ``z [..., D]`` against ``y [..., D]``.

    Computed term by term as ``z(2y − z) / (|y| + |y − z|)`` (equal to ``|y| − |y − z|``), which avoids
    the cancellation of subtracting two large L1 norms when the contribution is small.
    """
    contribution = contribution.float()
    target = target.float()
    difference = target - contribution
    denominator = target.abs() + difference.abs()
    # z · ((2y − z) / (|y| + |y − z|)): the ratio lies in [−1, 1], so no product underflows.
    ratio = (2 * target - contribution) / denominator.clamp_min(torch.finfo(torch.float32).tiny)
    terms = contribution * ratio
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
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, float]:
    """One layer's edge weights from every source to an aggregated sink set.

    alpha_bar: [H, N] summed (weighted) attention of the sinks to each source; values: [G, N, d];
    out_weight: [H, d, D]; target ``Y_S`` and residual ``R_S``: [D].
    Returns ``e [N]`` with ``e_j = Σ_h p[h, j] / (Σ_{j', h} p + r)`` and the denominator (0 → e = 0).
    """
    heads, width = alpha_bar.shape
    model_width = out_weight.shape[-1]
    chunk = max(1, block_elements // (heads * model_width))
    target = target.float()
    per_source = torch.zeros(width, dtype=torch.float32, device=alpha_bar.device)  # [N]
    for start in range(0, width, chunk):
        stop = min(start + chunk, width)
        vectors = head_value_vectors(values[:, start:stop], out_weight)  # [H, c, D]
        contribution = alpha_bar[:, start:stop, None].float() * vectors  # [H, c, D]
        per_source[start:stop] = proximity(contribution, target).sum(0)
    denominator = float(per_source.sum() + proximity(residual, target))
    if denominator <= 0.0:
        return torch.zeros_like(per_source), 0.0
    return per_source / denominator, denominator


def token_edges(
    alpha: torch.Tensor,
    head_vectors: torch.Tensor,
    targets: torch.Tensor,
    residuals: torch.Tensor,
) -> torch.Tensor:
    """One layer's edge weights from every source to each of C sinks separately (token-wise IFR).

    alpha: [H, C, N] attention rows (already scaled per sink where a sandwich norm needs it);
    head_vectors: [H, N, D]; targets ``x_mid`` and residuals: [C, D]. Returns [C, N].
    """
    contribution = alpha.float()[..., None] * head_vectors[:, None]  # [H, C, N, D]
    per_head = proximity(contribution, targets.float()[None, :, None, :])  # [H, C, N]
    per_source = per_head.sum(0)  # [C, N]
    denominator = per_source.sum(-1) + proximity(residuals, targets)  # [C]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator[:, None] > 0, per_source / safe[:, None], torch.zeros_like(per_source))
