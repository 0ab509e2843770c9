"""spantrace.readout: the teacher-forced log-prob readout, checked against a full log-softmax by hand."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

from spantrace.readout import answer_log_probs, cached_token_log_probs, token_log_probs


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", vocab_size=64).eval()


def full_log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)  # [T, V]


def test_shared_and_per_row_positions_read_the_named_logits(model):
    ids = torch.tensor([[3, 9, 4, 17, 8, 2], [5, 6, 7, 8, 9, 10]])
    by_hand = [full_log_probs(model, row.tolist()) for row in ids]
    shared = torch.tensor([1, 4])
    with torch.inference_mode():
        values = token_log_probs(model, shared, torch.tensor([11, 12]), input_ids=ids)
    assert values.shape == (2, 2)
    for row in range(2):
        expected = torch.stack([by_hand[row][1, 11], by_hand[row][4, 12]])
        torch.testing.assert_close(values[row], expected, rtol=1e-5, atol=1e-5)
    per_row = torch.tensor([[0, 3], [2, 5]])
    targets = torch.tensor([[1, 2], [3, 4]])
    with torch.inference_mode():
        values = token_log_probs(model, per_row, targets, input_ids=ids)
    for row in range(2):
        expected = torch.stack([by_hand[row][per_row[row, k], targets[row, k]] for k in range(2)])
        torch.testing.assert_close(values[row], expected, rtol=1e-5, atol=1e-5)


def test_cached_readout_equals_the_whole_forward(model):
    ids = [3, 9, 4, 17, 8, 2, 30, 31]
    by_hand = full_log_probs(model, ids)
    with torch.inference_mode():
        first, cache = cached_token_log_probs(model, torch.tensor([4]), torch.tensor([ids[5]]),
                                              torch.tensor([ids[:5]]), None)
        rest, _ = cached_token_log_probs(model, torch.tensor([0, 1]), torch.tensor([ids[6], ids[7]]),
                                         torch.tensor([ids[5:7]]), cache)  # positions 5 and 6 of the whole
    torch.testing.assert_close(first[0], by_hand[4, ids[5]][None], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rest[0], torch.stack([by_hand[5, ids[6]], by_hand[6, ids[7]]]), rtol=1e-5, atol=1e-5)


def test_answer_log_probs_pads_prompts_of_any_length(model):
    prompts, answer = [[5, 6, 7, 8, 9], [5], [10, 11, 12]], [20, 21]
    values = answer_log_probs(model, prompts, answer)
    for prompt, value in zip(prompts, values, strict=True):
        by_hand = full_log_probs(model, prompt + answer)
        expected = sum(float(by_hand[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))
        assert value == pytest.approx(expected, rel=1e-5)
    with pytest.raises(Exception, match="non-empty"):
        answer_log_probs(model, [[]], answer)
