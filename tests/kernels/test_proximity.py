"""Kernels against slow loops, plus Hypothesis properties: finite, non-negative, scale-free."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spantrace.kernels.proximity import head_value_vectors, proximity, span_edges, span_proximities, token_edges

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


def slow_proximity(z: np.ndarray, y: np.ndarray) -> float:
    return max(0.0, float(np.abs(y).sum() - np.abs(y - z).sum()))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, (2, 7), elements=finite))
def test_proximity_matches_definition(pair: np.ndarray) -> None:
    z, y = pair.astype(np.float64)
    got = float(proximity(torch.tensor(z), torch.tensor(y)))
    expected = slow_proximity(z, y)
    assert np.isfinite(got) and got >= 0
    # float32 arithmetic: error relative to the magnitudes involved
    assert abs(got - expected) <= 1e-6 * (np.abs(y).sum() + np.abs(z).sum()) + 1e-30


def test_proximity_is_accurate_for_tiny_contributions() -> None:
    # |y|_1 − |y − z|_1 loses every digit in float32 when z ≪ y; the stable form keeps them.
    y = torch.full((4096,), 100.0)
    z = torch.full((4096,), 1e-5)
    assert float(proximity(z, y)) == pytest.approx(4096 * 1e-5, rel=1e-5)
    naive = float(y.abs().sum() - (y - z).abs().sum())
    assert abs(naive - 4096 * 1e-5) > 1e-3  # what the naive form would have given


def test_head_value_vectors_match_loop() -> None:
    torch.manual_seed(0)
    values, out_weight = torch.randn(2, 5, 3), torch.randn(4, 3, 6)  # G=2, N=5, d=3; H=4, D=6
    got = head_value_vectors(values, out_weight)
    for h in range(4):
        for j in range(5):
            torch.testing.assert_close(got[h, j], values[h // 2, j] @ out_weight[h])


def _random_layer(seed: int, heads: int = 4, groups: int = 2, n: int = 9, d: int = 3, width: int = 8):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(groups, n, d, generator=generator)
    out_weight = torch.randn(heads, d, width, generator=generator)
    alpha = torch.rand(heads, n, n, generator=generator).tril()
    alpha = alpha / alpha.sum(-1, keepdim=True)
    x_in = torch.randn(n, width, generator=generator)
    x_mid = x_in + torch.einsum("hij,hjD->iD", alpha, head_value_vectors(values, out_weight))
    return values, out_weight, alpha, x_in, x_mid


def test_span_edges_match_loop_and_ignore_chunking() -> None:
    values, out_weight, alpha, x_in, x_mid = _random_layer(1)
    sinks, weights = torch.tensor([5, 7, 8]), torch.tensor([0.5, 2.0, 1.0])
    alpha_bar = torch.einsum("hcn,c->hn", alpha[:, sinks], weights)
    target, residual = weights @ x_mid[sinks], weights @ x_in[sinks]
    edges, denominator = span_edges(alpha_bar, values, out_weight, target, residual)
    vectors = head_value_vectors(values, out_weight).double()
    p = np.zeros(9)
    for h in range(4):
        for j in range(9):
            p[j] += slow_proximity(float(alpha_bar[h, j]) * vectors[h, j].numpy(), target.double().numpy())
    r = slow_proximity(residual.double().numpy(), target.double().numpy())
    np.testing.assert_allclose(edges.numpy(), p / (p.sum() + r), rtol=1e-5, atol=1e-7)
    assert abs(denominator - (p.sum() + r)) < 1e-4 * denominator
    for block in (1, 24, 100):
        chunked, _ = span_edges(alpha_bar, values, out_weight, target, residual, block_elements=block)
        torch.testing.assert_close(chunked, edges)


def test_one_sink_span_edges_equal_token_edges() -> None:
    values, out_weight, alpha, x_in, x_mid = _random_layer(2)
    vectors = head_value_vectors(values, out_weight)
    rows = token_edges(alpha[:, 3:7], vectors, x_mid[3:7], x_in[3:7])  # [4, N]
    for c, sink in enumerate(range(3, 7)):
        weight = torch.tensor([3.0])  # any positive weight: it cancels
        alpha_bar = weight * alpha[:, sink]
        edges, _ = span_edges(alpha_bar, values, out_weight, weight * x_mid[sink], weight * x_in[sink])
        torch.testing.assert_close(edges, rows[c], rtol=1e-5, atol=1e-7)
        assert float(rows[c, sink + 1 :].abs().max()) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
    zero_target=st.booleans(),
)
def test_edges_finite_nonnegative_and_scale_free(seed: int, scale: float, zero_target: bool) -> None:
    values, out_weight, alpha, x_in, x_mid = _random_layer(seed)
    if zero_target:  # degenerate: nothing flows, nothing may blow up
        x_mid, x_in, alpha = torch.zeros_like(x_mid), torch.zeros_like(x_in), torch.zeros_like(alpha)
    sinks = torch.tensor([6, 8])
    weights = torch.tensor([1.0, 2.0])
    base, _ = span_edges(
        torch.einsum("hcn,c->hn", alpha[:, sinks], weights),
        values,
        out_weight,
        weights @ x_mid[sinks],
        weights @ x_in[sinks],
    )
    scaled_weights = weights * scale
    scaled, _ = span_edges(
        torch.einsum("hcn,c->hn", alpha[:, sinks], scaled_weights),
        values,
        out_weight,
        scaled_weights @ x_mid[sinks],
        scaled_weights @ x_in[sinks],
    )
    rows = token_edges(alpha[:, sinks], head_value_vectors(values, out_weight), x_mid[sinks], x_in[sinks])
    for edges in (base, scaled, rows):
        assert torch.isfinite(edges).all() and (edges >= 0).all()
        assert float(edges.sum(-1).max()) <= 1.0 + 1e-5
    torch.testing.assert_close(scaled, base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("d", [1, 8])
@pytest.mark.parametrize("seed", range(4))
def test_span_proximities_skip_only_channels_that_cannot_overshoot(seed: int, d: int) -> None:
    """Mostly small contributions, a few large ones (attention sinks), a target with exact zeros and a channel
    no head writes: the bounded kernel equals the dense definition Σ_h Σ_d min(u, 2|Y| − u), clamped per head.
    With d = 1 the Cauchy–Schwarz bound is attained (u_d = ‖a‖·|W_d|), so a bound any tighter would miss."""
    generator = torch.Generator().manual_seed(seed)
    heads, groups, n, width = 6, 3, 40, 24
    values = torch.randn(groups, n, d, generator=generator, dtype=torch.float64)
    out_weight = torch.randn(heads, d, width, generator=generator, dtype=torch.float64)
    out_weight[:, :, 5] = 0.0  # a channel nobody writes
    alpha_bar = torch.rand(heads, n, generator=generator, dtype=torch.float64) * (1e-3 if d > 1 else 0.3)
    alpha_bar[:, [0, 7, 31]] = torch.rand(heads, 3, generator=generator, dtype=torch.float64) * 3  # large sources
    target = torch.randn(width, generator=generator, dtype=torch.float64) * 4
    target[[2, 11]] = 0.0
    u = torch.einsum("hn,hnd,hdD->hnD", alpha_bar, values.repeat_interleave(heads // groups, 0), out_weight)
    u = u * torch.where(target >= 0, 1.0, -1.0)
    want = torch.minimum(u, 2 * target.abs() - u).sum(-1).clamp_min(0).sum(0)  # [N]
    for block in (None, 7, 1):
        got = span_proximities(alpha_bar.float(), values.float(), out_weight.float(), target.float(),
                               block_elements=block)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    small = span_proximities(None, values.float() * 1e-4, out_weight[:groups].float(), target.float())
    assert torch.isfinite(small).all()
