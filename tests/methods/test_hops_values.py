"""The recursive hops against a re-derivation written here (not the hop loop of ``methods/hops.py``).

- Signed methods weigh hop k's recursive sinks by the positive part of hop k − 1's scores, normalised.
- ``recursive="assistant"`` with hops ≥ 1: the earlier assistant turn's tokens are recursive sinks and get no
  final score; the result equals ``m ⊙ s⁰ + ρ_0 · m ⊙ s¹`` computed from the method alone.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from method_cases import make_run
from tiny_models import make_tiny_model

import spantrace
from spantrace.methods.base import AttributionMethod, SinkScores
from spantrace.methods.hops import trace_hops
from spantrace.methods.registry import get_method


class SignedRecorder(AttributionMethod):
    """A signed method with fixed scores (negative ones on the recursive span) that records its sink weights."""

    name = "test-signed-recorder"
    description = "test only"
    signed: ClassVar[bool] = True

    def __init__(self, scores: torch.Tensor) -> None:
        self.fixed = scores
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def score(self, run, sinks, sink_weights, *, chunk_size):  # noqa: ANN001, ANN201
        self.calls.append((sinks.clone(), sink_weights.clone()))
        return SinkScores(scores=self.fixed.clone())


def test_signed_hop_weights_are_the_positive_part() -> None:
    run = make_run("llama")  # 18 tokens, prompt 8
    fixed = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5, 0.3, 0.2,  # prompt
                          -2.0, 1.0, -0.5, 3.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0])  # generation
    method = SignedRecorder(fixed)
    traced = trace_hops(method, run, (13, 17), hops=1, recursive="reasoning", stop_mask=None, chunk_size=8)
    sinks, weights = method.calls[1]
    assert sinks.tolist() == list(range(8, 13))  # T: the generation before the span
    positive = fixed[8:13].clamp_min(0)
    torch.testing.assert_close(weights, positive / positive.sum())
    rho0 = float(positive.sum() / fixed.clamp_min(0).sum())
    assert traced.rho[0] == pytest.approx(rho0, rel=1e-6)
    prompt = torch.zeros(18)
    prompt[:8] = 1
    torch.testing.assert_close(traced.scores, prompt * fixed + rho0 * prompt * fixed)


def test_recursive_assistant_with_hops_against_the_method_alone(tokenizer) -> None:
    model = spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512),
                            tokenizer, "tiny-llama")
    messages = [
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "It is 7."},
        {"role": "user", "content": "And twice that?"},
        {"role": "assistant", "content": "Twice 7 is 14."},
    ]
    run = model.run(messages=messages, progress=False)
    start, end = run.prompt_length, run.num_tokens
    result = run.trace((start, end), method="attention-last", hops=1, recursive="assistant")
    context = run.assistant_positions()
    assert "".join(run.tokens[p] for p in context).strip() == "It is 7."  # the earlier turn's own text
    method = get_method("attention-last")
    s0 = method.score(run, torch.arange(start, end), torch.ones(end - start), chunk_size=64).scores.double()
    region = torch.cat([context, torch.arange(start, end)])
    positive = s0.clamp_min(0)
    rho0 = float(positive[region].sum() / positive.sum())
    weights = positive[region] / positive[region].sum()
    s1 = method.score(run, region, weights.float(), chunk_size=64).scores.double()
    observed = torch.zeros(run.num_tokens, dtype=torch.float64)
    observed[: run.prompt_length] = 1
    observed[context] = 0
    expected = observed * s0 + rho0 * observed * s1
    np.testing.assert_allclose(result.scores, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert np.all(result.scores[context.numpy()] == 0) and result.rho[0] == pytest.approx(rho0, rel=1e-5)
    assert np.abs(result.hop_scores[1]).sum() > 0  # hop 1 ran and scored something

