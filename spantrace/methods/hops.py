"""Recursive hops: trace the span, then trace the reasoning by what the span drew from it.

Hop 0 scores the span O. Hop k ≥ 1 uses the recursive span G as sinks, weighted by the previous
hop's scores on G. ``ρ_0 = Σ_G s⁰ / Σ s⁰`` and ``ρ_k = ρ_{k−1} · Σ_G sᵏ / Σ sᵏ``; the final score is
``m ⊙ s⁰ + Σ_{k≥1} ρ_{k−1} · m ⊙ sᵏ`` with m = 1 on the prompt. One loop for every method; for
methods with signed scores, ρ and the hop weights use the positive part of the scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..protocols import RunView
from .base import AttributionMethod, checked_scores

RECURSIVE_SPANS = ("generation", "reasoning", "assistant")
MAX_HOPS = 16  # the most recursive hops a trace takes, in the API, the CLI and the viewer alike


@dataclass(frozen=True)
class HopTrace:
    scores: torch.Tensor  # [N] final combined score, 0 outside the prompt
    hop_scores: list[torch.Tensor]  # hops + 1 raw [N] arrays, hop 0 first
    rho: list[float]  # ρ_0 … ρ_K
    recursive_span: tuple[int, int]
    rows: torch.Tensor | None  # hop-0 per-sink rows, where the method has them
    row_positions: torch.Tensor | None
    hop_seconds: list[float]
    notes: tuple[str, ...]


def recursive_span(span: tuple[int, int], prompt_length: int, mode: str) -> tuple[int, int]:
    """G as ``(start, end)``: ``"generation"`` is T ∪ O, ``"reasoning"`` is T only. ``"assistant"`` is T ∪ O
    too, plus the earlier assistant turns of a conversation (given to ``trace_hops`` as ``context_sinks``)."""
    start, end = span
    return (prompt_length, start) if mode == "reasoning" else (prompt_length, end)


def _share(scores: torch.Tensor, region: torch.Tensor) -> float:
    """Σ_G s / Σ s in float64 over the positive part of s, within [0, 1]; 0 when there is no mass at all.
    region: the positions of G."""
    scores = scores.double().clamp_min(0.0)
    total = float(scores.sum())
    if total <= 0:
        return 0.0
    return min(1.0, float(scores[region].sum()) / total)


def trace_hops(
    method: AttributionMethod,
    run: RunView,
    span: tuple[int, int],
    *,
    hops: int,
    recursive: str,
    stop_mask: torch.Tensor | None,
    chunk_size: int,
    context_sinks: torch.Tensor | None = None,
) -> HopTrace:
    """Run ``method`` on the span and ``hops`` recursive hops. stop_mask: [N] bool, soft-deleted tokens.

    context_sinks: positions in the prompt that belong to G as well (earlier assistant turns, for
    ``recursive="assistant"``): they are recursive sinks, and, like the generation, unobserved (m = 0)."""
    num_tokens, prompt_length = run.num_tokens, run.prompt_length
    region = recursive_span(span, prompt_length, recursive)
    observed = torch.zeros(num_tokens, dtype=torch.float32)
    observed[:prompt_length] = 1.0
    region_positions = torch.arange(*region)
    if context_sinks is not None and context_sinks.numel():
        context_sinks = context_sinks[context_sinks < prompt_length]
        observed[context_sinks] = 0.0
        region_positions = torch.cat([context_sinks, region_positions]).unique(sorted=True)
    notes: list[str] = []

    def drop_stop_tokens(scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(stop_mask, 0.0) if stop_mask is not None else scores

    sinks = torch.arange(*span)
    weights = torch.ones(sinks.shape[0])
    if stop_mask is not None:
        weights = weights.masked_fill(stop_mask[sinks], 0.0)
        if weights.sum() == 0:
            notes.append("every span token is a stop token; kept them as sinks")
            weights = torch.ones(sinks.shape[0])

    started = time.perf_counter()
    first = checked_scores(method, method.score(run, sinks, weights, chunk_size=chunk_size), num_tokens, 0)
    notes.extend(f"hop 0: {note}" for note in first.notes)
    scores = drop_stop_tokens(first.scores)
    hop_seconds = [time.perf_counter() - started]
    hop_scores, rho = [scores], [_share(scores, region_positions)]
    final = observed * scores
    for hop in range(1, hops + 1):
        started = time.perf_counter()
        # Signed methods (gradients, occlusion, LRP) weigh the recursive sinks by their positive part.
        previous = hop_scores[-1][region_positions].clamp_min(0.0)
        mass = float(previous.double().sum())
        if region_positions.numel() == 0 or mass <= 0:
            notes.append(f"hop {hop}: no score mass on the recursive span {region}; hop scores are 0")
            scores = torch.zeros(num_tokens, dtype=torch.float32)
        else:
            result = method.score(run, region_positions, previous / mass, chunk_size=chunk_size)
            result = checked_scores(method, result, num_tokens, hop)
            notes.extend(f"hop {hop}: {note}" for note in result.notes)
            scores = drop_stop_tokens(result.scores)
        final = final + rho[-1] * observed * scores
        rho.append(rho[-1] * _share(scores, region_positions))
        hop_scores.append(scores)
        hop_seconds.append(time.perf_counter() - started)
    return HopTrace(
        scores=final,
        hop_scores=hop_scores,
        rho=rho,
        recursive_span=region,
        rows=first.rows,
        row_positions=first.row_positions,
        hop_seconds=hop_seconds,
        notes=tuple(notes),
    )
