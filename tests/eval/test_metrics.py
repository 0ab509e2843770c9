"""Metrics against hand-computed values (DESIGN.md §2): monotone, flat, noisy, rising curves; all-zero scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spantrace.eval import metrics


def test_auc_is_the_trapezoid_rule():
    assert metrics.auc([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert metrics.auc([1.0, 0.0]) == pytest.approx(0.5)
    assert metrics.auc([1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.0)


def test_monotone_curve():
    curve = [-10.0, -15.0, -20.0]  # n = [1, 0.5, 0]
    np.testing.assert_allclose(metrics.normalize_deletion(curve), [1.0, 0.5, 0.0])
    assert metrics.rise(curve) == pytest.approx(0.5)
    assert metrics.mas(curve, [1.0, 0.5, 0.0]) == pytest.approx(0.5)  # density = n: AP = 0


def test_noisy_curve_takes_the_running_minimum():
    curve = [-10.0, -18.0, -14.0, -20.0]  # scaled [1, .2, .6, 0] -> running min [1, .2, .2, 0]
    np.testing.assert_allclose(metrics.normalize_deletion(curve), [1.0, 0.2, 0.2, 0.0])
    assert metrics.rise(curve) == pytest.approx((1.4 - 0.5) / 3)
    # AP = [0, .3, .05, 0]; n + AP = [1, .5, .25, 0] (already min-max normalised)
    assert metrics.mas(curve, [1.0, 0.5, 0.25, 0.0]) == pytest.approx((1.75 - 0.5) / 3)


def test_mas_min_max_rescales():
    curve = [-1.0, -3.0, -2.0]  # s_K = -2: scaled [1, -1, 0] -> clip [1, 0, 0] -> n = [1, 0, 0]
    np.testing.assert_allclose(metrics.normalize_deletion(curve), [1.0, 0.0, 0.0])
    # d = [1, .8, 0]: AP = [0, .8, 0], n + AP = [1, .8, 0]
    assert metrics.mas(curve, [1.0, 0.8, 0.0]) == pytest.approx((1.8 - 0.5) / 2)


def test_flat_curve_is_all_zeros():
    assert metrics.is_flat([-5.0, -5.0, -5.0])
    np.testing.assert_array_equal(metrics.normalize_deletion([-5.0, -5.0, -5.0]), [0.0, 0.0, 0.0])
    assert metrics.rise([-5.0, -5.0, -5.0]) == 0.0
    assert metrics.mas([-5.0, -5.0, -5.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)  # n + AP = d


def test_rising_curve_is_all_zeros():
    np.testing.assert_array_equal(metrics.normalize_deletion([-10.0, -8.0, -5.0]), [0.0, 0.0, 0.0])
    assert metrics.rise([-10.0, -8.0, -5.0]) == 0.0


def test_insertion_auc():
    curve = [-20.0, -12.0, -10.0]  # m = [0, .8, 1]
    assert metrics.insertion_auc(curve) == pytest.approx((1.8 - 0.5) / 2)
    assert metrics.insertion_auc([-20.0, -9.0, -10.0]) == pytest.approx((2.0 - 0.5) / 2)  # running max, clipped
    assert metrics.insertion_auc([-3.0, -3.0]) == 0.0


def test_minmax_of_a_constant_is_zero():
    np.testing.assert_array_equal(metrics.minmax([0.3, 0.3]), [0.0, 0.0])
    np.testing.assert_allclose(metrics.minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])


def test_ranking_breaks_ties_by_position():
    np.testing.assert_array_equal(metrics.rank_positions([0.0, 0.0, 0.0]), [0, 1, 2])
    np.testing.assert_array_equal(metrics.rank_positions([0.1, 0.5, 0.1, 0.5]), [1, 3, 0, 2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.rank_positions([0.1, float("nan")])


def test_groups_and_density():
    groups = metrics.deletion_groups([3.0, 1.0, 0.0, -2.0], steps=2)
    assert [list(g) for g in groups] == [[0, 1], [2, 3]]
    np.testing.assert_allclose(metrics.deletion_density([3.0, 1.0, 0.0, -2.0], groups), [1.0, 0.0, 0.0])
    groups = metrics.deletion_groups([0.0] * 4, steps=3)  # all-zero scores: left to right, larger groups first
    assert [list(g) for g in groups] == [[0, 1], [2], [3]]
    np.testing.assert_allclose(metrics.deletion_density([0.0] * 4, groups), [1.0, 0.5, 0.25, 0.0])
    groups = metrics.deletion_groups([1.0, 2.0], steps=3)  # fewer tokens than steps: empty last group
    assert [list(g) for g in groups] == [[1], [0], []]
    np.testing.assert_allclose(metrics.deletion_density([1.0, 2.0], groups), [1.0, 1 / 3, 0.0, 0.0])


def test_recovery():
    scores = np.zeros(20)
    scores[[2, 10, 5]] = [0.9, 0.8, 0.7]  # top ⌈0.1 · 20⌉ = 2: positions 2 and 10
    gold = np.zeros(20, dtype=bool)
    gold[[2, 3]] = True
    assert metrics.recovery(scores, gold) == pytest.approx(0.5)
    assert metrics.recovery(scores, gold, frac=0.15) == pytest.approx(0.5)  # top 3: 2, 10, 5
    assert metrics.recovery(np.zeros(11), np.eye(11, dtype=bool)[1]) == 1.0  # ties by position: top 2 = 0, 1
    assert metrics.top_count(30, 0.1) == 3  # not 4 from 0.1 · 30 = 3.0000000000000004
    with pytest.raises(ValueError, match="gold"):
        metrics.recovery(scores, np.zeros(20, dtype=bool))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 0, allow_nan=False), min_size=2, max_size=22),
    st.floats(0.1, 10),
    st.floats(-5, 5),
)
def test_rise_and_mas_are_bounded_and_scale_free(curve, scale, shift):
    value = metrics.rise(curve)
    assert 0.0 <= value <= 1.0
    if not metrics.is_flat(curve):
        shifted = [scale * s + shift for s in curve]
        if not metrics.is_flat(shifted):
            assert metrics.rise(shifted) == pytest.approx(value, abs=1e-9)
    density = np.linspace(1.0, 0.0, len(curve))
    assert 0.0 <= metrics.mas(curve, density) <= 1.0
