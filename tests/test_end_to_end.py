"""The built-in real model, end to end: generate, trace the answer, read the result."""

from __future__ import annotations

import numpy as np
import pytest

import spantrace

PROMPT = "What is 17 + 25? Answer with the number only."


@pytest.fixture(scope="module")
def run() -> spantrace.Run:
    return spantrace.load().run(PROMPT, max_new_tokens=16, progress=False)


def test_generation_answers_and_is_captured(run: spantrace.Run) -> None:
    assert run.num_tokens > run.prompt_length
    assert run.capture.num_layers == 30
    assert run.generated_text.strip()
    assert run.tokens[: run.prompt_length] == [
        run.model.tokenizer.decode([i]) for i in run.token_ids[: run.prompt_length]
    ]


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
def test_trace_the_answer(run: spantrace.Run, method: str) -> None:
    result = run.trace((run.prompt_length, run.num_tokens), method=method, hops=1)
    prompt = result.scores[: run.prompt_length]
    assert np.all(np.isfinite(result.scores)) and np.all(result.scores >= 0)
    assert np.all(result.scores[run.prompt_length :] == 0)
    # Each layer's edges out of all sources sum to at most one; 30 layers bound the hop-0 total.
    assert 0 < result.hop_scores[0].sum() <= 30 + 1e-3
    combined = result.hop_scores[0] + result.rho[0] * result.hop_scores[1]
    np.testing.assert_allclose(prompt, combined[: run.prompt_length], rtol=1e-5, atol=1e-7)
    assert 0 < result.rho[1] <= result.rho[0] <= 1
    # The sum's numbers and operator lead what the answer rests on. Of the 16 user tokens 5 are "1", "7", "+",
    # "2", "5": scores in a random order put the three best all among them with probability ~2 %, and their
    # mean is then about the others' (here it is over twice theirs).
    top = result.top(12)
    assert len(top) == 12 and all(t.position < run.prompt_length for t in top)
    printed = "\n".join(f"{t.position:4d} {t.token!r:>14} {t.score:.4f}" for t in top)
    print(printed)
    numbers = {"1", "7", "2", "5", "+"}
    assert all(t.token.strip() in numbers for t in top[:3]), printed
    user = [i for i in range(run.prompt_length) if not result.template_mask[i]]
    is_number = np.array([run.tokens[i].strip() in numbers for i in user])
    assert is_number.sum() == 5 and len(user) == 16, [run.tokens[i] for i in user]
    user_scores = prompt[user]
    assert user_scores[is_number].mean() > 1.5 * user_scores[~is_number].mean(), printed


def test_flashtrace_and_ifr_agree_on_a_one_token_span(run: spantrace.Run) -> None:
    last = (run.num_tokens - 1, run.num_tokens)
    flash = run.trace(last, hops=0)
    tokenwise = run.trace(last, method="ifr", hops=0)
    np.testing.assert_allclose(flash.hop_scores[0], tokenwise.hop_scores[0], rtol=1e-4, atol=1e-6)
