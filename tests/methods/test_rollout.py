"""Attention rollout: stochastic rows, and the dense product of the model's own attention."""

from __future__ import annotations

import pytest
import torch
from method_cases import SINK_WEIGHTS, SINKS

from spantrace.kernels.rows import attention_rows
from spantrace.layers.softmax import layer_inputs
from spantrace.methods.registry import get_method
from spantrace.methods.rollout import rollout_rows


def dense_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """``Ã_{L−1} ··· Ã_0`` with ``Ã = normalise_rows(0.5 · mean_h A + 0.5 · I)``: [N, N] float64 (reference)."""
    size = attentions[0].shape[-1]
    product = torch.eye(size, dtype=torch.float64)
    for attention in attentions:
        mixed = 0.5 * attention.mean(0) + 0.5 * torch.eye(size, dtype=torch.float64)
        product = (mixed / mixed.sum(-1, keepdim=True)) @ product
    return product


def test_rollout_rows_sum_to_one(run):
    layer = layer_inputs(run.adapter, run.capture, 1)
    sinks = torch.arange(run.num_tokens)
    rows = rollout_rows(attention_rows(layer.queries, layer.keys, sinks, layer.rule), sinks)
    torch.testing.assert_close(rows.sum(-1), torch.ones(run.num_tokens))
    assert torch.all(rows >= 0)


@pytest.mark.parametrize("sink", [8, 16])
def test_one_sink_rolls_out_to_a_distribution(run, sink):
    scores = get_method("rollout").score(run, torch.tensor([sink]), torch.tensor([1.0]), chunk_size=4).scores
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.all(scores >= 0) and torch.all(scores[sink + 1 :] == 0)


@pytest.mark.parametrize("chunk_size", [1, 128])
def test_rollout_matches_the_dense_product(run, eager_attentions, chunk_size):
    scores = get_method("rollout").score(run, SINKS, SINK_WEIGHTS, chunk_size=chunk_size).scores
    expected = SINK_WEIGHTS.double() @ dense_rollout(eager_attentions)[SINKS]
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)
    assert float(scores.sum()) == pytest.approx(float(SINK_WEIGHTS.sum()), rel=1e-5)
