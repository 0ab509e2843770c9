"""``recursive="assistant"`` with hops ≥ 1 against the float64 reference (``tests/reference.py``) on two families.

A conversation with an earlier assistant turn, given in full (the last turn is the output). In ``"assistant"``
mode the earlier turn's tokens join the recursive span G: they are sinks of hops ≥ 1 (weighted by what the
previous hop gave them) and get no final score. The reference builds the same trace from the float64 eager
model's own attention, with G written out as positions (``reference.trace(..., earlier_turns=…)``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from reference import LayerTerms, reference_terms, trace
from test_reference import assert_trace_close
from tiny_models import make_tiny_model

import spantrace

MESSAGES = [
    {"role": "user", "content": "3 + 4?"},
    {"role": "assistant", "content": "It is 7."},
    {"role": "user", "content": "Twice that?"},
    {"role": "assistant", "content": "Twice 7 is 14."},
]
FAMILIES = ("llama", "olmo2")  # a pre-norm and a post-norm adapter


@functools.cache
def case(family: str, tokenizer) -> tuple[spantrace.Run, list[LayerTerms]]:  # noqa: ANN001 - a HF tokenizer
    """The library's run of the conversation on a tiny model with the built-in tokenizer, and its float64 terms."""
    model = make_tiny_model(family, vocab_size=len(tokenizer), max_position_embeddings=512)
    run = spantrace.Model(model, tokenizer, f"tiny-{family}").run(messages=MESSAGES, progress=False)
    return run, reference_terms(model, torch.tensor(run.token_ids))


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("family", FAMILIES)
def test_recursive_assistant_with_hops_against_the_float64_reference(tokenizer, family: str, method: str) -> None:
    run, terms = case(family, tokenizer)
    span, prompt_length = (run.prompt_length, run.num_tokens), run.prompt_length
    earlier = tuple(run.assistant_positions().tolist())
    assert "".join(run.tokens[p] for p in earlier).strip() == "It is 7."  # the earlier turn's own text
    for hops in (1, 2):
        want = trace(terms, span, prompt_length, method=method, hops=hops, recursive="assistant",
                     earlier_turns=earlier)
        got = run.trace(span, method=method, hops=hops, recursive="assistant")
        assert_trace_close(got, want, f"{family} {method} hops={hops} assistant")
        assert np.all(np.asarray(got.scores)[list(earlier)] == 0)
    # the earlier turn changes the result: without it (plain "generation") the scores differ
    plain = trace(terms, span, prompt_length, method=method, hops=2, recursive="generation")
    assert np.abs(plain.scores - want.scores).max() > 1e-3
