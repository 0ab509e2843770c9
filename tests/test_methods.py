"""One table over the whole registry: every method, the same run and span, the same checks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.loading import builtin
from spantrace.methods.registry import describe_methods, get_method, list_methods

REQUIRED = {
    "flashtrace",
    "ifr",
    "attention-last",
    "attention-mean",
    "rollout",
    "grad-input",
    "integrated-gradients",
    "occlusion",
    "attnlrp",
    "ifr-rollout",
}
METHODS = list_methods()
PROMPT_LENGTH = 7


def test_every_method_is_listed_with_a_description_and_a_cost():
    assert REQUIRED <= set(spantrace.list_methods())
    described = {info.name: info for info in describe_methods()}
    assert set(described) == set(METHODS)
    assert all(info.description for info in described.values())
    assert all(described[name].cost.startswith("O(") for name in REQUIRED)


def test_options_reach_the_method_and_wrong_ones_are_refused():
    assert get_method("integrated-gradients", steps=7).steps == 7
    with pytest.raises(spantrace.SpanTraceError, match="does not take"):
        get_method("rollout", steps=3)


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny_run(request) -> spantrace.Run:
    return spantrace.load(make_tiny_model(request.param)).run(input_ids=random_ids(16, seed=2), prompt_length=7)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_tiny_models(tiny_run, method):
    span = (11, 14)
    result = tiny_run.trace(span, method=method, hops=1)
    assert result.method == method and result.scores.shape == (tiny_run.num_tokens,)
    assert result.scores.dtype == np.float32 and np.all(np.isfinite(result.scores))
    assert len(result.hop_scores) == 2 and all(np.all(np.isfinite(h)) for h in result.hop_scores)
    assert np.all(result.scores[PROMPT_LENGTH:] == 0)  # the observation mask
    assert np.all(result.hop_scores[0][span[1] :] == 0)  # nothing after the span feeds it
    assert np.any(result.hop_scores[0] != 0)


# --- the built-in model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_run() -> spantrace.Run:
    if importlib.util.find_spec(builtin.PACKAGE_NAME) is None:
        pytest.skip(f"needs {builtin.INSTALL_LINE}")
    model = spantrace.load()
    # No chat template: a short run keeps IG (21 forward + backward passes) and occlusion cheap.
    run = model.run("Question: what is 17 + 25?", output=" 17 + 25 = 42. The answer is 42.", chat=False)
    assert run.num_tokens <= 60
    return run


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_the_builtin_model(builtin_run, method):
    span = (builtin_run.num_tokens - 3, builtin_run.num_tokens)  # "42."
    result = builtin_run.trace(span, method=method, hops=0, stop_tokens=True)  # hops: see the tiny table
    assert result.scores.shape == (builtin_run.num_tokens,) and np.all(np.isfinite(result.scores))
    assert all(np.all(np.isfinite(h)) for h in result.hop_scores)
    stop = builtin_run.stop_token_mask().numpy()
    assert stop.any() and all(np.all(h[stop] == 0) for h in result.hop_scores)  # one shared soft deletion
    assert np.any(result.scores[: builtin_run.prompt_length] != 0)
