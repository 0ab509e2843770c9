"""Token-level IFR rollout against an independent absorbing-chain solve, and against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_cases import PROMPT_LENGTH, SINK_WEIGHTS, SINKS
from reference import ifr_row, reference_terms

from spantrace.methods.ifr import TokenwiseIFR
from spantrace.methods.registry import get_method


def absorbed_by_the_prompt(run, last: int) -> torch.Tensor:
    """Where mass on each position ends, as a matrix: [last + 1, PROMPT_LENGTH] float64 (reference).

    Generated positions g pass mass along ``row_g`` normalised over ``j < g``; the prompt keeps it.
    With Q the generated→generated and R the generated→prompt transitions, generated positions end
    on the prompt as ``(I − Q)⁻¹ R``; prompt positions stay where they are.
    """
    generated = torch.arange(PROMPT_LENGTH, last + 1)
    rows = TokenwiseIFR().score(run, generated, torch.ones(len(generated)), chunk_size=64).rows.double()
    steps = torch.zeros(last + 1, last + 1, dtype=torch.float64)
    for index, g in enumerate(generated.tolist()):
        steps[g, :g] = rows[index, :g] / rows[index, :g].sum()
    q = steps[PROMPT_LENGTH:, PROMPT_LENGTH:]
    r = steps[PROMPT_LENGTH:, :PROMPT_LENGTH]
    ends = torch.zeros(last + 1, PROMPT_LENGTH, dtype=torch.float64)
    ends[:PROMPT_LENGTH] = torch.eye(PROMPT_LENGTH, dtype=torch.float64)
    ends[PROMPT_LENGTH:] = torch.linalg.solve(torch.eye(len(generated), dtype=torch.float64) - q, r)
    return ends


@pytest.mark.parametrize("chunk_size", [2, 128])
def test_rollout_matches_the_absorbing_chain(run, chunk_size):
    result = get_method("ifr-rollout").score(run, SINKS, SINK_WEIGHTS, chunk_size=chunk_size)
    last = int(SINKS.max())
    sink_rows = TokenwiseIFR().score(run, SINKS, torch.ones(len(SINKS)), chunk_size=64).rows.double()
    expected_rows = sink_rows[:, : last + 1] @ absorbed_by_the_prompt(run, last)  # [M, P]
    torch.testing.assert_close(result.rows[:, :PROMPT_LENGTH].double(), expected_rows, rtol=1e-4, atol=1e-6)
    expected = (SINK_WEIGHTS.double() @ expected_rows) / SINK_WEIGHTS.sum()
    torch.testing.assert_close(result.scores[:PROMPT_LENGTH].double(), expected, rtol=1e-4, atol=1e-6)
    assert result.row_positions.tolist() == SINKS.tolist()


def test_mass_is_kept_and_ends_on_the_prompt(run):
    result = get_method("ifr-rollout").score(run, SINKS, SINK_WEIGHTS, chunk_size=64)
    ifr = get_method("ifr").score(run, SINKS, SINK_WEIGHTS, chunk_size=64)
    assert torch.all(result.scores[PROMPT_LENGTH:] == 0) and torch.all(result.scores >= 0)
    assert float(result.scores.sum()) == pytest.approx(float(ifr.scores.sum()), rel=1e-5)
    torch.testing.assert_close(result.rows.sum(-1), ifr.rows.sum(-1), rtol=1e-5, atol=1e-6)


def rollout_product(rows: np.ndarray, prompt_length: int, last: int) -> np.ndarray:
    """``T_last · T_{last−1} ⋯ T_P`` [N, N] from the token-to-token IFR matrix ``rows`` [N, N] (reference).

    ``T_g`` is the identity with row g replaced by g's own IFR row over its earlier sources, normalised
    (``T_g[g, j] = row_g(j) / Σ_{j′<g} row_g(j′)`` for j < g, 0 elsewhere, the self edge included): a row
    vector times ``T_g`` moves the mass on g onto what g read and leaves every other position as it is.
    """
    size = rows.shape[0]
    product = np.eye(size)
    for g in range(last, prompt_length - 1, -1):  # the latest position hands its mass back first
        step = np.eye(size)
        step[g] = 0.0
        step[g, :g] = rows[g, :g] / rows[g, :g].sum()
        product = product @ step
    return product


def test_rollout_equals_matrix_products_of_the_float64_ifr_matrix(run):
    """Every value of ``rows`` and ``scores`` against the float64 reference (``tests/reference.py``): the
    token-to-token IFR matrix from the model's own eager attention, rolled out by plain matrix products."""
    terms = reference_terms(run.model.hf_model, torch.tensor(run.token_ids))
    last = int(SINKS.max())
    size = run.num_tokens
    matrix = np.zeros((size, size))  # [N, N]: row i = token-wise IFR of sink i
    for i in range(PROMPT_LENGTH, last + 1):
        matrix[i] = ifr_row(terms, i)
    rolled = matrix[SINKS.numpy()] @ rollout_product(matrix, PROMPT_LENGTH, last)  # [M, N]
    assert np.abs(rolled[:, PROMPT_LENGTH:]).max() < 1e-12 and rolled[:, :PROMPT_LENGTH].min() > 0
    weights = SINK_WEIGHTS.double().numpy()
    expected = weights @ rolled / weights.sum()
    result = get_method("ifr-rollout").score(run, SINKS, SINK_WEIGHTS, chunk_size=4)
    np.testing.assert_allclose(result.rows.double().numpy(), rolled, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.scores.double().numpy(), expected, rtol=1e-4, atol=1e-6)
