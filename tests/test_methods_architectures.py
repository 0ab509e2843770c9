"""Every registered method on every supported architecture: it runs through the adapter, or refuses by name."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

import spantrace
from spantrace.methods.attnlrp import SUPPORTED_ARCHITECTURES as ATTNLRP_ARCHITECTURES

PROMPT_LENGTH = 7
SPAN = (11, 14)
# Integrated gradients is occlusion's and grad-input's cost times its steps: a few steps suffice here.
OPTIONS = {"integrated-gradients": {"steps": 4}}
# FlashTrace and token-wise IFR are checked against the float64 reference on every architecture
# (test_reference.py); the methods that read attention rows or rebuild the model run on all of them here.
# The ones that only call the model's own forward and backward (gradients, occlusion) need no adapter
# beyond the embeddings: they run on one model of each kind of wrapper and attention.
ADAPTER_METHODS = ("attention-last", "attention-mean", "rollout", "ifr-rollout", "attnlrp")
FORWARD_METHODS = ("grad-input", "integrated-gradients", "occlusion")
FORWARD_ARCHITECTURES = ("gpt_oss", "gemma3", "mistral3", "deepseek_v3", "gemma4", "llama4", "olmo3")
CASES = [(arch, method) for arch in ARCHITECTURES for method in ADAPTER_METHODS] + [
    (arch, method) for arch in FORWARD_ARCHITECTURES for method in FORWARD_METHODS
]


def expected_refusal(arch: str, method: str) -> str | None:
    """The refusal a method must give on a type it has no exact rule for (a pattern of its message), or None."""
    if method == "attnlrp" and arch not in ATTNLRP_ARCHITECTURES:
        return "attnlrp supports .* Use another method"
    if method in ("grad-input", "integrated-gradients") and arch in ("gemma4", "gemma4_text"):
        return f"{method} differentiates the input embeddings, .*per-layer input embeddings"  # a 2nd token channel
    return None


@functools.cache
def tiny_run(arch: str) -> spantrace.Run:
    return spantrace.load(make_tiny_model(arch)).run(input_ids=random_ids(16, seed=2), prompt_length=PROMPT_LENGTH)


def test_every_method_is_in_one_of_the_tables() -> None:
    assert set(spantrace.list_methods()) == {"flashtrace", "ifr", *ADAPTER_METHODS, *FORWARD_METHODS}


@pytest.mark.parametrize("arch, method", CASES)
def test_method_runs_or_refuses_by_name(arch: str, method: str) -> None:
    run = tiny_run(arch)
    refusal = expected_refusal(arch, method)
    if refusal is not None:
        with pytest.raises(spantrace.UnsupportedArchitectureError, match=refusal):
            run.trace(SPAN, method=method)
        return
    result = run.trace(SPAN, method=method, hops=1, method_options=OPTIONS.get(method))
    assert all(np.all(np.isfinite(h)) for h in result.hop_scores)
    assert np.all(result.hop_scores[0][SPAN[1]:] == 0)  # nothing after the span feeds it
    assert np.any(result.hop_scores[0][: SPAN[1]] != 0)
