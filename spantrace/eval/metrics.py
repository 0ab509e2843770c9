"""Faithfulness metrics (docs/evaluation.md) as pure NumPy functions, checkable by hand.

A *deletion curve* is ``s_0 … s_K``: the teacher-forced summed log-probability of the whole target
after removing the top-ranked prompt tokens in ``k`` of ``K`` equal groups (``s_0``: nothing removed,
``s_K``: every ranked token removed). ``spantrace.eval.curves.deletion_curve`` measures it on a model.

    n_k      = min_{i≤k} clip((s_i − s_K) / |s_0 − s_K|, 0, 1)          normalised deletion curve
    AUC(a)   = (Σ_{k=0..K} a_k − (a_0 + a_K) / 2) / K                    trapezoid rule, unit steps
    RISE     = AUC(n)                                                     lower is better
    d_k      = 1 − (score mass removed in steps 1…k) / (total mass)       attribution density, d_0 = 1, d_K = 0
    AP_k     = |n_k − d_k|
    MAS      = AUC(minmax(clip(n + AP, 0, 1)))                            lower is better (Walker et al. 2024)
    Recovery = |top ⌈frac · P⌉ positions ∩ gold| / |gold|                 higher is better (Recall@10%)
    insertion: t_0 … t_K with t_0 = everything removed, t_K = nothing removed (tokens put back in rank order),
    m_k      = max_{i≤k} clip((t_i − t_0) / |t_K − t_0|, 0, 1),  insertion AUC = AUC(m)   higher is better

Degenerate cases (decided here, the same for every method):

- ``s_0 == s_K`` (|s_0 − s_K| ≤ ``FLAT_TOLERANCE``): removing every ranked token did not move the
  target, so no ranking can be told apart from another: ``n`` is all zeros (the same as a curve that
  only rises, where the running minimum is 0 from the start). ``is_flat(curve)`` lets a report flag it.
  The same rule gives ``m`` all zeros for a flat insertion curve.
- Ranking: descending score, ties broken by position (earlier first); all-zero scores therefore
  remove tokens left to right. NaN scores are rejected.
- Density: the mass of a token is its score clipped at 0 (a negative score claims no support). With
  zero total mass, the density falls with the share of *tokens* removed instead.
- ``minmax`` of a constant vector is all zeros.
- Recovery with no gold token raises ``ValueError`` (the task has no gold positions).

Source-level measures (``spantrace.eval.sources`` measures them; a *source* is a context sentence or a
document, its score the sum of its tokens' scores as ``TraceResult.by`` pools them):

    Source recovery@k = |top k sources ∩ gold sources| / |gold sources|             higher is better
    top source hit    = 1 if the best-ranked source is the target source, else 0     higher is better
    ablation curve    a(k_j) = Σ log p(answer | context without the top k_j sources), k_0 = 0 < k_1 < …
    drop(k)           = a(0) − a(k)   (nats; > 0: the answer became less likely)     higher is better
    ablation AUC      = (1 / k_max) · Σ_j (k_j − k_{j−1}) · (drop(k_{j−1}) + drop(k_j)) / 2
                        the mean drop over 0 … k_max, trapezoid rule on the real k axis (not unit steps)

Their degenerate cases, the same for every method (and for the random-order baseline):

- Sources are ranked like tokens: descending score, ties broken by position (earlier first). A source
  that holds no scored token gets score −∞ (last). NaN scores are rejected.
- k larger than the number of sources takes them all: recovery@k is then 1, and an ablation step
  ``k_j`` drops ``min(k_j, S)`` sources (the curve goes flat once every source is gone).
- Recovery with no gold source raises ``ValueError`` (the runner writes None); k < 1 raises too.
- An ablation grid must start at 0 and rise strictly; with one point (only k = 0) there is no AUC.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLAT_TOLERANCE = 1e-6  # nats: a deletion curve whose ends differ by less is flat


def _as_curve(values: Any, name: str = "curve") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of K + 1 ≥ 2 values; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def auc(values: Any) -> float:
    """``AUC(a) = (Σ_k a_k − (a_0 + a_K)/2) / K`` for ``a_0 … a_K``: the trapezoid area on [0, 1]."""
    a = _as_curve(values, "values")
    steps = a.shape[0] - 1
    return float((a.sum() - (a[0] + a[-1]) / 2.0) / steps)


def is_flat(curve: Any) -> bool:
    """True when ``|s_0 − s_K| ≤ FLAT_TOLERANCE``: deleting every ranked token changed nothing."""
    s = _as_curve(curve)
    return bool(abs(s[0] - s[-1]) <= FLAT_TOLERANCE)


def normalize_deletion(curve: Any) -> np.ndarray:
    """``n_k = min_{i≤k} clip((s_i − s_K)/|s_0 − s_K|, 0, 1)``; all zeros for a flat curve."""
    s = _as_curve(curve)
    if is_flat(s):
        return np.zeros_like(s)
    scaled = np.clip((s - s[-1]) / abs(s[0] - s[-1]), 0.0, 1.0)
    return np.minimum.accumulate(scaled)


def rise(curve: Any) -> float:
    """RISE (deletion AUC) = ``AUC(n)`` of the raw deletion curve ``s_0 … s_K``; lower is better."""
    return auc(normalize_deletion(curve))


def minmax(values: Any) -> np.ndarray:
    """``(a − min a) / (max a − min a)``; all zeros when ``a`` is constant."""
    a = np.asarray(values, dtype=np.float64)
    low, high = float(a.min()), float(a.max())
    if high - low <= 0.0:
        return np.zeros_like(a)
    return (a - low) / (high - low)


def mas(curve: Any, density: Any) -> float:
    """MAS = ``AUC(minmax(clip(n + |n − d|, 0, 1)))`` with ``n`` the normalised curve; lower is better.

    ``density`` is ``d_0 … d_K`` (``d_0 = 1``, ``d_K = 0``), e.g. from ``deletion_density``.
    """
    n = normalize_deletion(curve)
    d = _as_curve(density, "density")
    if d.shape != n.shape:
        raise ValueError(f"density has {d.shape[0]} values but the curve has {n.shape[0]}")
    return auc(minmax(np.clip(n + np.abs(n - d), 0.0, 1.0)))


def normalize_insertion(curve: Any) -> np.ndarray:
    """``m_k = max_{i≤k} clip((t_i − t_0)/|t_K − t_0|, 0, 1)``; all zeros for a flat curve."""
    t = _as_curve(curve)
    if is_flat(t):
        return np.zeros_like(t)
    scaled = np.clip((t - t[0]) / abs(t[-1] - t[0]), 0.0, 1.0)
    return np.maximum.accumulate(scaled)


def insertion_auc(curve: Any) -> float:
    """Insertion AUC = ``AUC(m)`` of ``t_0`` (all removed) … ``t_K`` (all back); higher is better."""
    return auc(normalize_insertion(curve))


def rank_positions(scores: Any) -> np.ndarray:
    """Indices of ``scores`` by descending score, ties broken by position (earlier first)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D; got shape {s.shape}")
    if np.any(np.isnan(s)):
        raise ValueError("scores hold NaN")
    return np.argsort(-s, kind="stable")


def deletion_groups(scores: Any, steps: int = 20) -> list[np.ndarray]:
    """The ranked indices cut into ``steps`` consecutive groups of (nearly) equal size, larger first.

    With fewer indices than steps, the last groups are empty (the curve then stays flat there).
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1; got {steps}")
    return list(np.array_split(rank_positions(scores), steps))


def deletion_density(scores: Any, groups: list[np.ndarray]) -> np.ndarray:
    """``d_0 … d_K``: 1 − the share of (non-negative) score mass removed after each step.

    With zero total mass the share of removed *tokens* is used instead; ``d_K`` is 0 either way.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    sizes = np.array([len(group) for group in groups], dtype=np.float64)
    masses = np.array([s[group].sum() for group in groups], dtype=np.float64)
    removed, total = (masses, masses.sum()) if masses.sum() > 0 else (sizes, sizes.sum())
    if total <= 0:
        raise ValueError("nothing to remove: every group is empty")
    density = 1.0 - np.concatenate([[0.0], np.cumsum(removed)]) / total
    density[-1] = 0.0  # exact, whatever the rounding
    return np.clip(density, 0.0, 1.0)


def top_count(length: int, frac: float) -> int:
    """``⌈frac · length⌉`` (at least 1, at most ``length``), immune to float noise such as 0.1·30."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1]; got {frac}")
    return min(length, max(1, math.ceil(round(frac * length, 9))))


def recovery(scores: Any, gold_mask: Any, frac: float = 0.1) -> float:
    """Recovery@frac: the share of gold positions among the top ``⌈frac · P⌉`` of ``P`` positions by score.

    ``|top ∩ gold| / |gold|`` (recall of the gold needle tokens; ties broken by position).
    """
    s = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold_mask, dtype=bool)
    if gold.shape != s.shape:
        raise ValueError(f"gold_mask has shape {gold.shape} but scores have {s.shape}")
    if not gold.any():
        raise ValueError("recovery needs at least one gold position")
    top = rank_positions(s)[: top_count(s.shape[0], frac)]
    return float(gold[top].sum() / gold.sum())


def _as_scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"source scores must be a non-empty 1-D array; got shape {s.shape}")
    return s


def source_recovery(scores: Any, gold_mask: Any, k: int) -> float:
    """Source recovery@k: the share of gold sources among the ``k`` best-ranked sources (``k`` capped at S)."""
    s = _as_scores(scores)
    gold = np.asarray(gold_mask, dtype=bool)
    if gold.shape != s.shape:
        raise ValueError(f"gold_mask has shape {gold.shape} but the source scores have {s.shape}")
    if not gold.any():
        raise ValueError("source recovery needs at least one gold source")
    if k < 1:
        raise ValueError(f"k must be ≥ 1; got {k}")
    top = rank_positions(s)[: min(k, s.shape[0])]
    return float(gold[top].sum() / gold.sum())


def top_source_hit(scores: Any, target: int) -> bool:
    """True when the best-ranked source (ties by position) is source ``target``."""
    s = _as_scores(scores)
    if not 0 <= target < s.shape[0]:
        raise ValueError(f"target source {target} is not one of the {s.shape[0]} sources")
    return bool(rank_positions(s)[0] == target)


def _as_grid(ks: Any) -> np.ndarray:
    grid = np.asarray(ks, dtype=np.float64)
    if grid.ndim != 1 or grid.shape[0] == 0 or grid[0] != 0 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"an ablation grid starts at 0 and rises strictly; got {list(ks)}")
    return grid


def ablation_drops(values: Any) -> np.ndarray:
    """``drop(k_j) = a(0) − a(k_j)`` of an ablation curve ``a(k_0 = 0), a(k_1), …`` (nats)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise ValueError("an ablation curve is a non-empty 1-D array of finite log-probabilities")
    return a[0] - a


def ablation_auc(ks: Any, values: Any) -> float:
    """The mean drop over ``0 … k_max``: trapezoid area of ``drop(k)`` on the grid ``ks``, divided by ``k_max``."""
    grid = _as_grid(ks)
    drops = ablation_drops(values)
    if drops.shape != grid.shape:
        raise ValueError(f"the ablation grid has {grid.shape[0]} points but the curve has {drops.shape[0]}")
    if grid.shape[0] < 2:
        raise ValueError("an ablation AUC needs a grid with at least one k > 0")
    area = float(np.sum(np.diff(grid) * (drops[1:] + drops[:-1]) / 2.0))
    return area / float(grid[-1])
