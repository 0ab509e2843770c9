"""AttnLRP: the rebuilt forward equals the model's, relevance is conserved, unsupported models say so.

Conservation, stated: ``Σ_j R(x_j) + absorbed_by_biases + absorbed_by_softmax = f`` (the weighted target
logits) to 1e-6 relative in float64 and 1e-4 in float32. The embeddings alone hold ``f`` less what the
attention softmaxes (and biases, where a model has them) absorb, as the paper's rules intend.
"""

from __future__ import annotations

import pytest
import torch
from method_cases import ARCHES, SINK_WEIGHTS, SINKS, make_run

import spantrace
from spantrace.methods.attnlrp import SUPPORTED_ARCHITECTURES, LlamaRelevanceModel, attnlrp_relevance
from spantrace.methods.objective import input_embeddings, objective_for
from spantrace.methods.registry import get_method


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_rebuilt_forward_gives_the_models_logits(arch):
    run = make_run(arch)  # mistral and qwen2 bring sliding windows, qwen2/qwen3 biases, qwen3 q/k norms
    objective = objective_for(run, SINKS, SINK_WEIGHTS)
    ids = torch.tensor(run.token_ids[: objective.length])
    with torch.no_grad():
        expected = run.model.hf_model(ids[None]).logits[0, objective.readout, objective.targets]
        rebuilt = LlamaRelevanceModel(run, None, chunk_size=3).logits(input_embeddings(run, ids), objective)
    torch.testing.assert_close(rebuilt, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_relevance_is_conserved(arch, dtype, tolerance):
    run = make_run(arch, dtype=dtype)
    relevance = attnlrp_relevance(run, SINKS, SINK_WEIGHTS, chunk_size=4, record=True)
    accounted = float(relevance.scores.double().sum()) + relevance.absorbed_by_biases + relevance.absorbed_by_softmax
    assert accounted == pytest.approx(relevance.target, rel=tolerance, abs=tolerance)
    if arch == "llama":  # no biases anywhere
        assert relevance.absorbed_by_biases == 0.0


def test_score_is_the_embedding_relevance(run):
    scores = get_method("attnlrp").score(run, SINKS, SINK_WEIGHTS, chunk_size=128).scores
    recorded = attnlrp_relevance(run, SINKS, SINK_WEIGHTS, chunk_size=2, record=True).scores
    torch.testing.assert_close(scores, recorded, rtol=1e-5, atol=1e-6)  # chunking and recording change nothing
    assert torch.isfinite(scores).all() and torch.all(scores[int(SINKS.max()) :] == 0)


@pytest.mark.parametrize("arch", ARCHES)
def test_hops_run_over_attnlrp(arch):
    result = make_run(arch).trace((13, 17), method="attnlrp", hops=2)
    assert len(result.hop_scores) == 3 and all(torch.isfinite(torch.from_numpy(h)).all() for h in result.hop_scores)


@pytest.mark.parametrize(
    "arch", ["gemma2", "gemma3_text", "phi3", "gpt2", "gpt_oss", "glm4", "granite", "qwen3_moe", "gemma3"]
)
def test_unsupported_architectures_say_so(arch):
    run = make_run(arch)
    with pytest.raises(spantrace.UnsupportedArchitectureError, match="attnlrp supports"):
        run.trace((13, 17), method="attnlrp")
