"""Deletion and insertion curves on a model: remove ranked prompt tokens in place, read the target's log-prob.

The target is the whole generation (reasoning + answer + EOS): ``s = Σ_{i ≥ P} log p(t_i | t_<i)``,
teacher-forced, with ``P`` the prompt length. Removing a token replaces its id *in place* by the
neutral token (pad, else EOS; positions unchanged). Only ``positions`` (the tokens the evaluation
ranks, see ``prompts.EvalTokens``) are ranked and removed, the same ones for every method; the rest
of the prompt is kept. All K + 1 sequences go through the model in batched forwards. On a run with images
the model reads them as it did in the run, and a removed image token reads the zero vector, as occlusion
removes it (``methods.objective.replaced_log_probs``, docs/vision-engine.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import SpanTraceError
from ..methods.objective import auto_batch_size, neutral_token_id, objective_for, replaced_log_probs
from .metrics import deletion_density, deletion_groups

if TYPE_CHECKING:
    from ..api import Run

DEFAULT_STEPS = 20


@dataclass(frozen=True)
class Curve:
    """One measured curve. values: [K + 1] summed log-probs; density: [K + 1] (deletion only, else None);
    groups: the K lists of run positions removed (deletion) or put back (insertion) at each step."""

    values: np.ndarray
    groups: list[np.ndarray]
    density: np.ndarray | None = None


def _ranked_groups(run: Run, scores: Any, positions: Any, steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] not in (run.prompt_length, run.num_tokens):
        raise SpanTraceError(f"scores have {scores.shape[0]} values; expected {run.prompt_length} or {run.num_tokens}")
    positions = np.arange(run.prompt_length) if positions is None else np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        raise SpanTraceError("no prompt position to rank and remove")
    if positions.min() < 0 or positions.max() >= run.prompt_length:
        raise SpanTraceError("ranked positions must lie in the prompt")
    ranked_scores = scores[positions]
    groups = [positions[group] for group in deletion_groups(ranked_scores, steps)]
    return ranked_scores, groups


def target_log_probs(run: Run, sequences: torch.Tensor, *, batch_size: int | None = None) -> np.ndarray:
    """Summed teacher-forced log-prob of the run's generated tokens under each row of ``sequences [B, T]``.

    ``sequences`` are the run's ids (up to the last generated token − 1) with some prompt ids replaced.
    """
    sinks = torch.arange(run.prompt_length, run.num_tokens)
    objective = objective_for(run, sinks, torch.ones(sinks.shape[0]))
    if objective is None:
        raise SpanTraceError("the run has no generated token to score")
    sequences = sequences[:, : objective.length]
    ids = torch.tensor(run.token_ids[: objective.length], dtype=torch.long)
    batch = batch_size or auto_batch_size(run, sequences.shape[1], objective.readout.shape[0], sequences.shape[0])
    with torch.inference_mode():  # image positions removed as occlusion removes them (the zero vector)
        values = replaced_log_probs(run, objective, ids, sequences, batch).cpu()
    return values.double().numpy()


def deletion_curve(
    run: Run,
    scores: Any,
    *,
    positions: Any = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
) -> Curve:
    """``s_0 … s_K``: the target log-prob after removing the top-ranked ``positions`` in ``k`` of K groups.

    scores: [P] or [N] attribution scores of the run (only ``positions`` are read; default all P prompt
    positions). Ranking: descending score, ties by position. Also returns the density ``d_0 … d_K``.
    """
    ranked_scores, groups = _ranked_groups(run, scores, positions, steps)
    ids = torch.tensor(run.token_ids, dtype=torch.long)
    sequences = ids.repeat(steps + 1, 1)  # [K + 1, N]: row k has groups 0 … k − 1 removed
    neutral = neutral_token_id(run)
    for step, group in enumerate(groups, start=1):
        sequences[step:, torch.as_tensor(group, dtype=torch.long)] = neutral
    values = target_log_probs(run, sequences, batch_size=batch_size)
    local_groups = deletion_groups(ranked_scores, steps)
    return Curve(values=values, groups=groups, density=deletion_density(ranked_scores, local_groups))


def insertion_curve(
    run: Run,
    scores: Any,
    *,
    positions: Any = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
) -> Curve:
    """``t_0 … t_K``: every ranked position removed, then put back in rank order, ``k`` groups at step k."""
    _, groups = _ranked_groups(run, scores, positions, steps)
    ids = torch.tensor(run.token_ids, dtype=torch.long)
    removed = ids.clone()
    removed[torch.as_tensor(np.concatenate(groups), dtype=torch.long)] = neutral_token_id(run)
    sequences = removed.repeat(steps + 1, 1)  # row k has groups 0 … k − 1 back
    for step, group in enumerate(groups, start=1):
        index = torch.as_tensor(group, dtype=torch.long)
        sequences[step:, index] = ids[index]
    return Curve(values=target_log_probs(run, sequences, batch_size=batch_size), groups=groups)


def top_k_drop(run: Run, scores: Any, k: int, *, positions: Any = None, batch_size: int | None = None) -> float:
    """``s_0 − s(top k removed)``: how much the target log-prob falls without the k top-ranked positions."""
    ranked_scores, _ = _ranked_groups(run, scores, positions, 1)
    positions = np.arange(run.prompt_length) if positions is None else np.asarray(positions, dtype=np.int64)
    order = positions[np.argsort(-ranked_scores, kind="stable")][:k]
    ids = torch.tensor(run.token_ids, dtype=torch.long)
    sequences = ids.repeat(2, 1)
    sequences[1, torch.as_tensor(order, dtype=torch.long)] = neutral_token_id(run)
    values = target_log_probs(run, sequences, batch_size=batch_size)
    return float(values[0] - values[1])
