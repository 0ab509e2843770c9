"""Occlusion: a hand-computed two-group case, sentence groups, batching."""

from __future__ import annotations

import pytest
import torch
from method_cases import PROMPT_LENGTH, SINK_WEIGHTS, SINKS

from spantrace.methods.occlusion import equal_groups, sentence_groups
from spantrace.methods.registry import get_method


def span_log_prob(model, ids: torch.Tensor) -> float:
    """Σ_i w_i log p(t_i | t_<i) over SINKS from the full logits of ``ids [N]``."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids[None]).logits[0].double(), -1)  # [N, V]
    return float((SINK_WEIGHTS.double() * log_probs[SINKS - 1, ids[SINKS]]).sum())


def test_two_groups_equal_the_hand_computed_drop(run):
    scores = get_method("occlusion", groups=2).score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    model, ids = run.model.hf_model, torch.tensor(run.token_ids)
    pad = model.config.pad_token_id
    original = span_log_prob(model, ids)
    for group in (slice(0, 4), slice(4, PROMPT_LENGTH)):
        occluded = ids.clone()
        occluded[group] = pad
        drop = original - span_log_prob(model, occluded)
        torch.testing.assert_close(
            scores[group].double(), torch.full((4,), drop, dtype=torch.float64), rtol=1e-4, atol=1e-5
        )
    assert torch.all(scores[PROMPT_LENGTH:] == 0)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batching_changes_nothing(run, batch_size):
    automatic = get_method("occlusion", groups=6).score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    batched = get_method("occlusion", groups=6, batch_size=batch_size).score(run, SINKS, SINK_WEIGHTS, chunk_size=1)
    torch.testing.assert_close(batched.scores, automatic, rtol=1e-4, atol=1e-5)


def test_groups():
    assert [g.tolist() for g in equal_groups(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [g.tolist() for g in equal_groups(3, 20)] == [[0], [1], [2]]
    tokens = ["Hello", " world", ".", " How", " are", " you", "?\n", "Fine"]
    assert [g.tolist() for g in sentence_groups(tokens)] == [[0, 1, 2], [3, 4, 5, 6], [7]]


def test_sentence_grouping_scores_whole_sentences(run):
    scores = get_method("occlusion", grouping="sentences").score(run, SINKS, SINK_WEIGHTS, chunk_size=1).scores
    # tiny runs have no tokenizer, so the prompt is one "sentence": every prompt token shares one drop
    assert torch.unique(scores[:PROMPT_LENGTH]).numel() == 1 and torch.all(scores[PROMPT_LENGTH:] == 0)
