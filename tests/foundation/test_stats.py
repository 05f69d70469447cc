"""esc_sweep.stats against references: a hand computation of the corrected resampled
t-test, baycomp's CorrelatedTTest on generated per-fold numbers, SciPy's t interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from esc_sweep.stats import bayesian_correlated_t_test, compare_paired, corrected_t_test, mean_interval

# Five folds of two runs, as fractions (ESC-50-like: a few points apart, folds spread ±5).
A = [0.765, 0.770, 0.743, 0.848, 0.717]
B = [0.780, 0.790, 0.750, 0.850, 0.740]


def test_corrected_t_test_matches_a_hand_computation():
    # d = B - A = [0.015, 0.020, 0.007, 0.002, 0.023]; mean 0.0134
    # sample variance (ddof 1): sum((d - 0.0134)^2) / 4
    #   = (0.0016^2 + 0.0066^2 + 0.0064^2 + 0.0114^2 + 0.0096^2) / 4
    #   = (0.00000256 + 0.00004356 + 0.00004096 + 0.00012996 + 0.00009216) / 4 = 0.0000773
    # Nadeau-Bengio, 5-fold CV: n_test/n_train = 1/4, so var(mean) = (1/5 + 1/4) * 0.0000773 = 0.000034785
    # t = 0.0134 / sqrt(0.000034785) = 0.0134 / 0.00589788 = 2.27200
    mean, (low, high), p, t, df = corrected_t_test(A, B, test_train_ratio=1 / 4)
    assert mean == pytest.approx(0.0134, abs=1e-12)
    assert df == 4
    assert t == pytest.approx(0.0134 / math.sqrt(0.45 * 0.0000773), rel=1e-9)
    assert t == pytest.approx(2.2720, abs=1e-4)
    half = 2.7764451051977987 * math.sqrt(0.45 * 0.0000773)  # t(0.975, 4) from tables: 2.7764
    assert (low, high) == pytest.approx((0.0134 - half, 0.0134 + half), rel=1e-9)
    assert p == pytest.approx(2 * (1 - scipy_stats.t.cdf(2.2720048, 4)), abs=1e-6)
    assert 0.08 < p < 0.09  # a naive paired t-test (factor 1/5 alone) would call this significant:
    naive_t = 0.0134 / math.sqrt(0.0000773 / 5)
    assert 2 * scipy_stats.t.sf(naive_t, 4) < 0.05


def test_the_correction_widens_the_interval_by_the_nadeau_bengio_factor():
    comparison = compare_paired(A, B, folds=5)
    corrected = comparison.ci95[1] - comparison.ci95[0]
    naive = comparison.naive_ci95[1] - comparison.naive_ci95[0]
    assert corrected / naive == pytest.approx(math.sqrt((1 / 5 + 1 / 4) / (1 / 5)))


folds_values = st.lists(st.floats(0.2, 1.0, allow_nan=False), min_size=10, max_size=10)


@settings(max_examples=60, deadline=None)
@given(a=folds_values, b=folds_values, rope=st.sampled_from([0.0, 0.01, 0.02, 0.05]),
       runs=st.sampled_from([1, 2]))
def test_bayesian_correlated_t_test_matches_baycomp(a, b, rope, runs):
    """Generated per-fold numbers: 10 values as 10 folds x 1 run or 5 folds x 2 runs."""
    from baycomp import CorrelatedTTest

    folds = len(a) // runs
    expected = CorrelatedTTest.probs(np.array(a), np.array(b), rope=rope, runs=runs)
    left, equivalent, right = bayesian_correlated_t_test(a, b, rope, test_train_ratio=1 / (folds - 1))
    if rope == 0:  # baycomp returns (left, right) without a rope
        assert (left, right) == pytest.approx(tuple(map(float, expected)), abs=1e-9)
        assert equivalent == pytest.approx(0.0, abs=1e-9)
    else:
        assert (left, equivalent, right) == pytest.approx(tuple(map(float, expected)), abs=1e-9)
    comparison = compare_paired(a, b, folds=folds, repeats=runs, rope=rope)
    assert comparison.prob_a_better == pytest.approx(left) and comparison.prob_b_better == pytest.approx(right)


@settings(max_examples=40, deadline=None)
@given(a=folds_values, b=folds_values)
def test_swapping_the_runs_mirrors_every_number(a, b):
    ab, ba = compare_paired(a, b, folds=5, repeats=2), compare_paired(b, a, folds=5, repeats=2)
    assert ab.mean_difference == pytest.approx(-ba.mean_difference, abs=1e-12)
    assert ab.ci95 == pytest.approx((-ba.ci95[1], -ba.ci95[0]), abs=1e-12)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert (ab.prob_a_better, ab.prob_equivalent) == pytest.approx((ba.prob_b_better, ba.prob_equivalent))
    assert ab.prob_a_better + ab.prob_equivalent + ab.prob_b_better == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=12))
def test_mean_interval_is_scipys_student_t_interval(values):
    low, high = mean_interval(values)
    x = np.asarray(values)
    if x.std(ddof=1) == 0:
        assert low == high == pytest.approx(x.mean())
        return
    expected = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert (low, high) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_identical_differences_are_a_point_mass():
    a = [0.5, 0.6, 0.7, 0.8, 0.9]
    b = [v + 0.02 for v in a]
    comparison = compare_paired(a, b, folds=5, rope=0.01)
    assert comparison.mean_difference == pytest.approx(0.02)
    assert comparison.prob_b_better == 1.0 and comparison.prob_a_better == 0.0
    assert comparison.p_value < 1e-6 or comparison.p_value == 0.0
    same = compare_paired(a, a, folds=5, rope=0.01)
    assert same.p_value == 1.0 and same.prob_equivalent == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        compare_paired([0.1, 0.2], [0.1, 0.2, 0.3], folds=5)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        compare_paired([0.1], [0.2], folds=5)
    with pytest.raises(ValueError, match="finite"):
        compare_paired([0.1, float("nan")], [0.2, 0.3], folds=5)
    assert all(math.isnan(v) for v in mean_interval([0.5]))
