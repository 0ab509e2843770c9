"""The library against the slow float64 reference in ``reference.py``, on every tiny architecture.

The reference runs a float64 eager copy of each model; the library runs the float32 model with its
default attention implementation (sdpa where the architecture has one). Same weights, same tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from reference import (
    LayerTerms,
    ReferenceTrace,
    decomposition_error,
    flashtrace_scores,
    float64_eager_copy,
    ifr_row,
    reference_terms,
    trace,
)
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

N_TOKENS = 16
PROMPT_LENGTH = 8
SPAN = (11, 14)  # generated tokens 11..13; 14 and 15 come after the span, 8..10 before it
IDS_SEED = 3
HOPS = (0, 1, 2)
RTOL, ATOL = 1e-4, 1e-6


@dataclass(frozen=True)
class Case:
    model: torch.nn.Module  # float32, default attention implementation
    ids: torch.Tensor  # [N]
    terms: list[LayerTerms]  # the float64 reference decomposition, one per layer


@functools.cache
def case(arch: str) -> Case:
    model = make_tiny_model(arch)
    ids = random_ids(N_TOKENS, seed=IDS_SEED)
    return Case(model, ids, reference_terms(model, ids))


@functools.cache
def reference_trace(arch: str, method: str, hops: int, recursive: str) -> ReferenceTrace:
    return trace(case(arch).terms, SPAN, PROMPT_LENGTH, method=method, hops=hops, recursive=recursive)


def spantrace_module() -> ModuleType:
    """The library under test."""
    import spantrace

    return spantrace


@functools.cache
def library_run(arch: str) -> Any:
    spantrace = spantrace_module()
    c = case(arch)
    return spantrace.load(c.model).run(input_ids=c.ids, prompt_length=PROMPT_LENGTH)


def assert_trace_close(
    got: Any, want: ReferenceTrace, label: str, rtol: float = RTOL, atol: float = ATOL
) -> None:
    assert len(got.hop_scores) == len(want.hop_scores), f"{label}: number of hops"
    assert len(got.rho) == len(want.rho), f"{label}: number of rho values"
    for k, (got_k, want_k) in enumerate(zip(got.hop_scores, want.hop_scores, strict=True)):
        got_k = np.asarray(got_k, dtype=np.float64)
        assert got_k.shape == want_k.shape, f"{label}: hop {k} shape"
        np.testing.assert_allclose(got_k, want_k, rtol=rtol, atol=atol, err_msg=f"{label}: hop {k} scores")
    scores = np.asarray(got.scores, dtype=np.float64)
    assert np.isfinite(scores).all(), f"{label}: non-finite final scores"
    np.testing.assert_allclose(scores, want.scores, rtol=rtol, atol=atol, err_msg=f"{label}: final scores")
    np.testing.assert_allclose(np.asarray(got.rho, dtype=np.float64), np.asarray(want.rho),
                               rtol=rtol, atol=atol, err_msg=f"{label}: rho")


# ----------------------------------------------------------------------------------------------------
# The reference checks itself
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decomposition_is_complete(arch: str) -> None:
    """Σ_{h, j≤i} contribution + residual == x_mid_i on every layer and sink: nothing lost or invented."""
    assert decomposition_error(case(arch).terms) < 1e-9


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_float64_copy_computes_the_same_model(arch: str) -> None:
    """The float64 eager copy (with its float64 RMSNorms) is the same function as the original model."""
    c = case(arch)
    with torch.no_grad():
        logits = c.model(input_ids=c.ids[None]).logits.double()  # [1, N, V]
        logits64 = float64_eager_copy(c.model)(input_ids=c.ids[None]).logits  # [1, N, V]
    assert logits64.dtype == torch.float64
    np.testing.assert_allclose(logits.numpy(), logits64.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reference_scores_are_bounded(arch: str) -> None:
    """Each layer gives at most a unit of edge mass, so 0 ≤ s(j) and Σ_j s(j) ≤ L; 0 ≤ ρ_K ≤ … ≤ ρ_0 ≤ 1."""
    num_layers = len(case(arch).terms)
    for method in ("flashtrace", "ifr"):
        result = reference_trace(arch, method, 2, "generation")
        for scores in result.hop_scores:
            assert (scores >= 0).all()
            assert scores.sum() <= num_layers + 1e-9
            assert (scores[SPAN[1]:] == 0).all()  # nothing after the last sink
        assert 1.0 >= result.rho[0] >= result.rho[1] >= result.rho[2] >= 0.0
        assert (result.scores[PROMPT_LENGTH:] == 0).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reference_one_token_span_is_an_ifr_row(arch: str) -> None:
    """With a single sink, FlashTrace's aggregated target is that sink: hop 0 equals its IFR row."""
    terms = case(arch).terms
    for i in (PROMPT_LENGTH, N_TOKENS - 1):
        span = (i, i + 1)
        flash = trace(terms, span, PROMPT_LENGTH, method="flashtrace", hops=0).hop_scores[0]
        ifr = trace(terms, span, PROMPT_LENGTH, method="ifr", hops=0).hop_scores[0]
        np.testing.assert_allclose(flash, ifr, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ifr, ifr_row(terms, i), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reference_flashtrace_ignores_weight_scale(arch: str) -> None:
    """prox(c·z, c·y) = c·prox(z, y) for c > 0, so scaling every sink weight changes nothing."""
    terms = case(arch).terms
    weights = np.zeros(N_TOKENS)  # [N]
    weights[PROMPT_LENGTH:] = np.random.default_rng(0).uniform(0.1, 2.0, N_TOKENS - PROMPT_LENGTH)
    base = flashtrace_scores(terms, weights)
    for factor in (1e-3, 7.5, 1e4):
        np.testing.assert_allclose(flashtrace_scores(terms, factor * weights), base, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------------------------------
# The library against the reference
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recursive", ["generation", "reasoning"])
@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_library_matches_reference(arch: str, method: str, recursive: str) -> None:
    run = library_run(arch)
    for hops in HOPS:
        got = run.trace(SPAN, method=method, hops=hops, recursive=recursive)
        want = reference_trace(arch, method, hops, recursive)
        assert_trace_close(got, want, f"{arch} {method} hops={hops} recursive={recursive}")


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_library_chunking_is_invisible(arch: str, method: str) -> None:
    """Chunking over sinks only reorders float32 sums: same result as unchunked, and as the reference."""
    run = library_run(arch)
    whole = run.trace(SPAN, method=method, hops=2)
    want = reference_trace(arch, method, 2, "generation")
    for chunk_size in (1, 3):
        chunked = run.trace(SPAN, method=method, hops=2, chunk_size=chunk_size)
        label = f"{arch} {method} chunk_size={chunk_size}"
        for k, (a, b) in enumerate(zip(chunked.hop_scores, whole.hop_scores, strict=True)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f"{label}: hop {k} vs unchunked")
        np.testing.assert_allclose(chunked.rho, whole.rho, rtol=1e-5, atol=1e-7, err_msg=f"{label}: rho")
        assert_trace_close(chunked, want, label)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_library_one_token_span_methods_agree(arch: str) -> None:
    run = library_run(arch)
    for i in (PROMPT_LENGTH, N_TOKENS - 1):
        span = (i, i + 1)
        flash = np.asarray(run.trace(span, method="flashtrace", hops=0).hop_scores[0], dtype=np.float64)
        ifr = np.asarray(run.trace(span, method="ifr", hops=0).hop_scores[0], dtype=np.float64)
        np.testing.assert_allclose(flash, ifr, rtol=1e-5, atol=1e-7, err_msg=f"{arch} sink {i}")
        np.testing.assert_allclose(flash, ifr_row(case(arch).terms, i), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{arch} sink {i} vs reference")
