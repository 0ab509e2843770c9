"""attention-last and attention-mean against the model's own eager attention probabilities."""

from __future__ import annotations

import pytest
import torch
from method_cases import SINK_WEIGHTS, SINKS, make_run

from spantrace.methods.registry import get_method


def expected_sink_attention(attention: torch.Tensor, sinks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i · mean_h α[h, i, :]`` from one layer's [H, N, N] probabilities. [N] float64."""
    return (weights.double()[:, None] * attention.mean(0)[sinks]).sum(0)


@pytest.mark.parametrize("chunk_size", [1, 128])
def test_attention_last_is_the_last_layer_mean_over_heads_summed_over_sinks(run, eager_attentions, chunk_size):
    scores = get_method("attention-last").score(run, SINKS, SINK_WEIGHTS, chunk_size=chunk_size).scores
    expected = expected_sink_attention(eager_attentions[-1], SINKS, SINK_WEIGHTS)
    assert scores.shape == (run.num_tokens,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)
    assert float(scores.sum()) == pytest.approx(float(SINK_WEIGHTS.sum()), rel=1e-5)  # rows sum to 1


def test_attention_mean_is_the_mean_over_layers(run, eager_attentions):
    scores = get_method("attention-mean").score(run, SINKS, SINK_WEIGHTS, chunk_size=3).scores
    expected = torch.stack([expected_sink_attention(a, SINKS, SINK_WEIGHTS) for a in eager_attentions]).mean(0)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)


def test_plain_span_through_trace_sums_the_sink_rows(run, eager_attentions):
    result = run.trace((13, 17), method="attention-last", hops=0)
    expected = eager_attentions[-1].mean(0)[13:17].sum(0)
    torch.testing.assert_close(torch.from_numpy(result.hop_scores[0]).double(), expected, rtol=1e-5, atol=1e-6)


def test_sliding_window_hides_far_sources():
    run = make_run("mistral")  # window of 5
    scores = get_method("attention-last").score(run, torch.tensor([15]), torch.tensor([1.0]), chunk_size=8).scores
    assert torch.all(scores[:11] == 0) and torch.all(scores[16:] == 0) and torch.all(scores[11:16] > 0)
