"""Gradient × input against a direct autograd computation on the Hugging Face model."""

from __future__ import annotations

import pytest
import torch
from method_cases import SINK_WEIGHTS, SINKS, make_run
from tiny_models import ARCHITECTURES

from spantrace import SpanTraceError
from spantrace.methods.objective import input_embeddings, objective_for, weighted_log_prob
from spantrace.methods.registry import get_method


def reference_gradient_times_input(run, sinks, weights) -> torch.Tensor:
    """``x ⊙ ∂f/∂x`` over the whole run, full logits, f = Σ_i w_i log p(t_i | t_<i): [N, D] float64."""
    model = run.model.hf_model
    ids = torch.tensor(run.token_ids)
    embeddings = model.get_input_embeddings()(ids)[None].detach().requires_grad_(True)
    log_probs = torch.log_softmax(model(inputs_embeds=embeddings).logits[0].double(), -1)  # [N, V]
    objective = (weights.double() * log_probs[sinks - 1, ids[sinks]]).sum()
    (gradient,) = torch.autograd.grad(objective, embeddings)
    return (gradient[0] * embeddings[0]).detach().double()


@pytest.mark.parametrize("aggregate", ["l2", "sum"])
def test_grad_input_matches_autograd(run, aggregate):
    scores = get_method("grad-input", aggregate=aggregate).score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    product = reference_gradient_times_input(run, SINKS, SINK_WEIGHTS)
    expected = product.norm(dim=-1) if aggregate == "l2" else product.sum(-1)
    assert scores.shape == (run.num_tokens,) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)
    assert torch.all(scores[int(SINKS.max()) :] == 0)  # the last sink's own input predicts nothing in the span


def test_works_when_the_caller_is_in_inference_mode(run):
    with torch.inference_mode():
        inside = get_method("grad-input").score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    outside = get_method("grad-input").score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    torch.testing.assert_close(inside, outside)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embedding_path_equals_token_path(arch):
    """Feeding the embeddings (as the gradient methods do) gives the same objective as feeding ids."""
    run = make_run(arch)
    objective = objective_for(run, SINKS, SINK_WEIGHTS)
    ids = torch.tensor(run.token_ids[: objective.length])[None]
    with torch.no_grad():
        from_ids = weighted_log_prob(run.model.hf_model, objective, input_ids=ids)
        from_embeddings = weighted_log_prob(run.model.hf_model, objective, inputs_embeds=input_embeddings(run, ids))
    torch.testing.assert_close(from_embeddings, from_ids, rtol=1e-5, atol=1e-5)


def test_unknown_aggregate_is_refused():
    with pytest.raises(SpanTraceError, match="aggregate"):
        get_method("grad-input", aggregate="max")
