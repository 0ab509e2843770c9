"""Deletion and insertion curves on a tiny random model: ends, groups, batching, the positions option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.eval.curves import deletion_curve, insertion_curve, top_k_drop

PROMPT_LENGTH = 10


@pytest.fixture(scope="module")
def run() -> spantrace.Run:
    model = spantrace.Model(make_tiny_model("llama"))
    return model.run(input_ids=random_ids(16, seed=3), prompt_length=PROMPT_LENGTH)


def target_log_prob(run, ids: torch.Tensor) -> float:
    """Σ_{i ≥ P} log p(t_i | t_<i) from the full logits (reference)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(run.model.hf_model(ids[None]).logits[0].double(), -1)
    original = torch.tensor(run.token_ids)
    sinks = torch.arange(PROMPT_LENGTH, run.num_tokens)
    return float(log_probs[sinks - 1, original[sinks]].sum())


def test_curve_ends_and_steps_match_the_reference(run):
    scores = np.array([0.0, 5, 1, 4, 2, 3, 0, 0, 0, 0.5])
    curve = deletion_curve(run, scores, steps=4)
    assert curve.values.shape == (5,) and curve.density.shape == (5,)
    assert [list(g) for g in curve.groups] == [[1, 3, 5], [4, 2, 9], [0, 6], [7, 8]]
    ids = torch.tensor(run.token_ids)
    expected = []
    removed = ids.clone()
    expected.append(target_log_prob(run, removed))
    for group in curve.groups:
        removed[torch.as_tensor(group)] = run.model.hf_model.config.pad_token_id
        expected.append(target_log_prob(run, removed))
    np.testing.assert_allclose(curve.values, expected, rtol=1e-4, atol=1e-4)
    assert curve.density[0] == 1.0 and curve.density[-1] == 0.0
    np.testing.assert_allclose(curve.density, 1 - np.cumsum([0, 12, 3.5, 0, 0]) / 15.5)
    inserted = insertion_curve(run, scores, steps=4)
    np.testing.assert_allclose(inserted.values[[0, -1]], curve.values[[-1, 0]], rtol=1e-5, atol=1e-5)
    assert top_k_drop(run, scores, 3) == pytest.approx(curve.values[0] - curve.values[1], abs=1e-4)


def test_batch_size_changes_nothing(run):
    scores = np.arange(PROMPT_LENGTH, dtype=float)
    one = deletion_curve(run, scores, steps=5, batch_size=1).values
    automatic = deletion_curve(run, scores, steps=5).values
    np.testing.assert_allclose(one, automatic, rtol=1e-5, atol=1e-5)


def test_only_the_given_positions_are_ranked_and_removed(run):
    scores = np.arange(run.num_tokens, dtype=float)[::-1].copy()  # full-length scores are accepted
    curve = deletion_curve(run, scores, positions=[2, 4, 6], steps=3)
    assert [list(g) for g in curve.groups] == [[2], [4], [6]]
    with pytest.raises(spantrace.SpanTraceError, match="prompt"):
        deletion_curve(run, scores, positions=[PROMPT_LENGTH], steps=2)
