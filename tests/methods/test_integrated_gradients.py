"""Integrated gradients: completeness, batching, and the trapezoid rule."""

from __future__ import annotations

import pytest
import torch
from method_cases import ARCHES, SINK_WEIGHTS, SINKS, make_run

from spantrace.methods.integrated_gradients import integrated_gradients, trapezoid
from spantrace.methods.registry import get_method


@pytest.fixture(scope="module", params=ARCHES)
def eos_baseline_run(request):
    """A run whose neutral token is EOS (id 2): the tiny models' pad row is all zeros, a degenerate baseline."""
    run = make_run(request.param)
    run.model.hf_model.config.pad_token_id = None
    return run


def test_trapezoid_weights_integrate_exactly_linear_functions():
    points, weights = trapezoid(7)
    assert points[0] == 0 and points[-1] == 1 and points.shape == (8,)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float((weights * points).sum()) == pytest.approx(0.5)


def test_completeness_within_five_percent_at_64_steps(eos_baseline_run):
    result = integrated_gradients(eos_baseline_run, SINKS, SINK_WEIGHTS, steps=64)
    difference = result.objective_input - result.objective_baseline
    assert abs(difference) > 1e-3  # the check below means something
    assert float(result.scores.sum()) == pytest.approx(difference, rel=0.05)
    assert torch.isfinite(result.scores).all() and torch.all(result.scores[int(SINKS.max()) :] == 0)


def test_batching_changes_nothing(eos_baseline_run):
    one = get_method("integrated-gradients", steps=6, batch_size=1).score(
        eos_baseline_run, SINKS, SINK_WEIGHTS, chunk_size=1
    )
    some = get_method("integrated-gradients", steps=6, batch_size=4).score(
        eos_baseline_run, SINKS, SINK_WEIGHTS, chunk_size=1
    )
    automatic = get_method("integrated-gradients", steps=6).score(eos_baseline_run, SINKS, SINK_WEIGHTS, chunk_size=1)
    torch.testing.assert_close(some.scores, one.scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(automatic.scores, one.scores, rtol=1e-4, atol=1e-6)


def test_a_zero_baseline_embedding_is_noted(run):
    # The tiny models' pad token (id 0) has an all-zero embedding row.
    result = integrated_gradients(run, SINKS, SINK_WEIGHTS, steps=2)
    assert any("all zeros" in note for note in result.notes)
