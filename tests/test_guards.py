"""Checks that fail when a one-line rule is wrong (issue 28, "bugs that survive"): each test names the rule it
guards, and docs/testing.md lists the mutation that made it fail.

- the answer span starts after the *last* ``</think>`` (spans.py ``_answer_range``);
- ``store_dtype`` is applied to what the run keeps (capture.py ``keep``);
- the proximity kernel clamps each head before summing heads, also on its early return (kernels/proximity.py);
- the deletion density counts only the positive part of the scores (eval/metrics.py ``deletion_density``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.eval import metrics
from spantrace.kernels.proximity import span_proximities
from spantrace.spans import _answer_range


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("first </think> middle </think> Final: 12", "Final: 12"),
        ("<think>a</think> draft </think>\nThe answer is 7.", "The answer is 7."),
    ],
)
def test_answer_starts_after_the_last_think_close(text: str, expected: str) -> None:
    found = _answer_range(text, len(text))
    assert found is not None and text[found[0] : found[1]] == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_store_dtype_is_applied_to_what_the_run_keeps(dtype: torch.dtype) -> None:
    model = spantrace.load(make_tiny_model("llama"))
    run = model.run(input_ids=random_ids(12, seed=3), prompt_length=5, store_dtype=dtype)
    kept = [*run.capture.x_in, *run.capture.x_mid]
    assert kept and all(t.dtype == dtype for t in kept)
    full = model.run(input_ids=random_ids(12, seed=3), prompt_length=5)
    assert all(t.dtype == torch.float32 for t in full.capture.x_in)
    # the kept values are the full-precision ones rounded to dtype, not something else
    torch.testing.assert_close(run.capture.x_in[1], full.capture.x_in[1].to(dtype))


def test_span_proximities_clamp_each_head_when_nothing_can_overshoot() -> None:
    """Small contributions (no channel can overshoot: the kernel returns early) with heads of opposite sign:
    ``Σ_h max(0, Σ_d u)``, not ``max(0, Σ_h Σ_d u)``."""
    generator = torch.Generator().manual_seed(0)
    heads, groups, n, d, width = 4, 2, 10, 3, 8
    values = torch.randn(groups, n, d, generator=generator, dtype=torch.float64) * 1e-4
    out_weight = torch.randn(heads, d, width, generator=generator, dtype=torch.float64)
    target = torch.randn(width, generator=generator, dtype=torch.float64).abs() + 1.0  # no zero: nothing overshoots
    target[::2] *= -1
    u = torch.einsum("hnd,hdD->hnD", values.repeat_interleave(heads // groups, 0), out_weight)
    u = u * torch.where(target >= 0, 1.0, -1.0)
    assert bool((u <= target.abs()).all())  # the early-return case indeed
    per_head = u.sum(-1)  # [H, N]
    assert bool(((per_head > 0).any(0) & (per_head < 0).any(0)).any())  # some source has heads of both signs
    want = per_head.clamp_min(0).sum(0)
    got = span_proximities(None, values.float(), out_weight.float(), target.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-12)


def test_deletion_density_ignores_negative_scores() -> None:
    """Negative scores hold no mass: removing them first leaves the density at 1."""
    scores = np.array([-3.0, 1.0, -1.0, 3.0])
    groups = [np.array([0]), np.array([2]), np.array([1]), np.array([3])]  # the negative ones first
    density = metrics.deletion_density(scores, groups)
    np.testing.assert_allclose(density, [1.0, 1.0, 1.0, 0.75, 0.0])

