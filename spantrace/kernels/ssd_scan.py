"""The Mamba-2 state-space scans as pure tensor maths (the SSD recurrence written in chunks), and the conv window.

Per head, ``y_i = Σ_{j≤i} M[i, j] x_j`` with ``M[i, j] = (C_i · B_j) Δ_j exp(Σ_{t=j+1..i} λ_t) + D [i = j]``
(``spantrace.layers.mamba2`` for where the quantities come from): ``forward_scan`` computes it and
``transposed_scan`` its transpose ``R_j = Σ_{i≥j} M[i, j] q_i``, both a chunk of positions at a time with a
carried state, O(N·P·n) per head and no N×N matrix. ``conv_to_sources`` spreads per-position weights back
over a depthwise causal conv's window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64  # positions per chunk of the forward / transposed scans


def _segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """``[..., Q] -> [..., Q, Q]``: entry ``[i, j] = Σ_{t=j+1..i} λ_t`` for ``i ≥ j`` (0 on the diagonal), −inf
    above it. Each entry is a direct sum of its own terms (no difference of two long cumulative sums)."""
    width = log_decay.shape[-1]
    below = torch.ones(width, width, dtype=torch.bool, device=log_decay.device).tril(-1)  # [t, j]: t > j
    terms = log_decay[..., :, None].expand(*log_decay.shape, width).masked_fill(~below, 0.0)  # [..., t, j]
    sums = terms.cumsum(dim=-2)  # [..., i, j] = Σ_{j<t≤i} λ_t
    causal = torch.ones(width, width, dtype=torch.bool, device=log_decay.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


def forward_scan(
    values: torch.Tensor,
    dt: torch.Tensor,
    log_decay: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    skip: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """``y_i = Σ_{j≤i} M[i, j] x_j`` per head: values ``x [H, N, P]``, dt ``Δ [H, N]``, log_decay ``λ [H, N]``,
    b, c ``[H, N, n]`` (already expanded from groups to heads), skip ``D [H]`` -> ``[H, N, P]``.

    Carried state between chunks: ``S = Σ_{j<c0} exp(Σ_{t=j+1..c0−1} λ_t) Δ_j x_j B_jᵀ`` ``[H, P, n]``.
    """
    heads, length, width = values.shape
    out = torch.empty_like(values)
    state = values.new_zeros(heads, width, b.shape[-1])  # [H, P, n]
    for start in range(0, length, chunk):
        part = slice(start, min(start + chunk, length))
        lam, step = log_decay[:, part], dt[:, part]  # [H, Q]
        segments = _segment_sums(lam)  # [H, Q, Q]
        mixing = torch.matmul(c[:, part], b[:, part].transpose(1, 2)) * segments.exp() * step[:, None, :]  # [H, i, j]
        into = lam.cumsum(-1)  # [H, Q]: Σ_{t=c0..i} λ_t
        carried = torch.matmul(c[:, part], state.transpose(1, 2)) * into.exp()[..., None]  # [H, Q, P]
        out[:, part] = torch.matmul(mixing, values[:, part]) + carried
        to_end = segments[:, -1, :]  # [H, Q]: Σ_{t=j+1..c1−1} λ_t
        fresh = torch.matmul((values[:, part] * (to_end.exp() * step)[..., None]).transpose(1, 2), b[:, part])
        state = into[:, -1, None, None].exp() * state + fresh
    return out + skip[:, None, None] * values


def transposed_scan(
    sink_weights: torch.Tensor,
    dt: torch.Tensor,
    log_decay: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    skip: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """``R_j = Σ_{i≥j} M[i, j] q_i`` per head (the transpose of ``forward_scan``): sink_weights ``q [H, N, P]``
    (zero off the sinks), other arguments as there -> ``[H, N, P]``.

    Runs from the last chunk back, carrying ``V = Σ_{i≥c1} exp(Σ_{t=c1..i} λ_t) q_i C_iᵀ`` ``[H, P, n]``.
    """
    heads, length, width = sink_weights.shape
    out = torch.empty_like(sink_weights)
    state = sink_weights.new_zeros(heads, width, c.shape[-1])  # [H, P, n]
    starts = list(range(0, length, chunk))
    for start in reversed(starts):
        part = slice(start, min(start + chunk, length))
        lam, step = log_decay[:, part], dt[:, part]  # [H, Q]
        segments = _segment_sums(lam)  # [H, Q, Q]
        mixing = torch.matmul(c[:, part], b[:, part].transpose(1, 2)) * segments.exp()  # [H, i, j]
        within = torch.matmul(mixing.transpose(1, 2), sink_weights[:, part])  # [H, j, P]
        to_end = segments[:, -1, :]  # [H, Q]: Σ_{t=j+1..c1−1} λ_t
        carried = torch.matmul(b[:, part], state.transpose(1, 2)) * to_end.exp()[..., None]  # [H, Q, P]
        out[:, part] = (within + carried) * step[..., None]
        into = lam.cumsum(-1)  # [H, Q]: Σ_{t=c0..i} λ_t
        fresh = torch.matmul((sink_weights[:, part] * into.exp()[..., None]).transpose(1, 2), c[:, part])  # [H, P, n]
        state = into[:, -1, None, None].exp() * state + fresh
    return out + skip[:, None, None] * sink_weights


def conv_to_sources(per_position: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """Spread per-position weights back over the conv window: ``[..., N, P] -> [..., N, P]`` with
    ``out[t] = Σ_{k<K} conv_weight[:, k] ⊙ per_position[t + K − 1 − k]`` (0 past the end).

    conv_weight: ``[H, P, K]`` when per_position is ``[H, …, N, P]`` (head first).
    """
    kernel = conv_weight.shape[-1]
    length = per_position.shape[-2]
    padded = F.pad(per_position, (0, 0, 0, kernel - 1))  # [..., N + K − 1, P]
    shape = (conv_weight.shape[0],) + (1,) * (per_position.dim() - 3) + (conv_weight.shape[1],)
    out = torch.zeros_like(per_position)
    for k in range(kernel):
        tap = conv_weight[..., k].reshape(shape)[..., None, :]  # [H, 1…, 1, P]
        shift = kernel - 1 - k
        out = out + tap * padded[..., shift : shift + length, :]
    return out
