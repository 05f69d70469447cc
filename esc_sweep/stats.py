"""How sure is a number, and is one run really better than another?

Cross-validated accuracies on ESC-50 spread about ±5 points from fold to fold, so a
mean alone decides nothing. This module holds the three statistics esc_sweep reports:

* ``mean_interval``: the 95 % Student-t interval of a mean over folds (every CV run);
* ``corrected_t_test``: the corrected resampled t-test of Nadeau & Bengio (2003) for
  two runs paired by fold. Plain paired t-tests over CV folds are far too confident:
  the training sets of the folds overlap (each pair shares (k-2)/(k-1) of its clips),
  so fold differences are positively correlated. Nadeau & Bengio replace the
  variance factor ``1/n`` by ``1/n + n_test/n_train``;
* ``bayesian_correlated_t_test``: the Bayesian correlated t-test (Benavoli et al.
  2017, the ``CorrelatedTTest`` of the baycomp package): the posterior of the mean
  difference is a Student t with the same corrected scale, read against a region of
  practical equivalence (ROPE) as P(A better), P(equivalent), P(B better).

With ``r`` repeats of a ``k``-fold CV there are ``n = r*k`` paired differences and the
test-to-train ratio is ``1/(k-1)`` (each fold holds one k-th of the clips).

Only NumPy and SciPy; no torch, no MLflow: usable on numbers from anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The Student-t confidence interval of the mean of ``values`` (NaNs for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    mean = float(x.mean())
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean - half, mean + half


@dataclass(frozen=True)
class PairedComparison:
    """Run B minus run A, paired by (repeat, fold); accuracies as fractions (0.01 = one point)."""

    mean_difference: float  # mean of B - A over the pairs
    ci95: tuple[float, float]  # 95 % interval of the mean difference (corrected)
    p_value: float  # two-sided, corrected resampled t-test; 1.0 when every difference is 0
    t_statistic: float
    df: int
    prob_a_better: float  # Bayesian correlated t-test: P(B - A < -rope)
    prob_equivalent: float  # P(|B - A| <= rope)
    prob_b_better: float  # P(B - A > rope)
    rope: float
    n_pairs: int
    folds: int  # k, folds per repeat
    repeats: int
    test_train_ratio: float  # n_test / n_train of one fold: 1/(k-1) for k-fold CV
    naive_ci95: tuple[float, float]  # the uncorrected paired-t interval, shown to explain the correction

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        out["naive_ci95"] = list(self.naive_ci95)
        return out


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values need the same length: {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError("a paired comparison needs at least 2 pairs (folds)")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired values must be finite")
    return y - x


def corrected_variance_factor(n_pairs: int, test_train_ratio: float) -> float:
    """Nadeau & Bengio's factor for the variance of the mean difference: 1/n + n_test/n_train."""
    return 1.0 / n_pairs + test_train_ratio


def corrected_t_test(
    a: Sequence[float], b: Sequence[float], test_train_ratio: float, confidence: float = 0.95
) -> tuple[float, tuple[float, float], float, float, int]:
    """Corrected resampled t-test of ``b - a``: (mean, interval, two-sided p-value, t, degrees of freedom)."""
    d = _differences(a, b)
    n = d.size
    mean, var = float(d.mean()), float(d.var(ddof=1))
    scale = math.sqrt(corrected_variance_factor(n, test_train_ratio) * var)
    quantile = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    if scale == 0.0:  # every pair differs by the same amount: no spread to test against
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return mean, (mean, mean), (1.0 if mean == 0 else 0.0), t, n - 1
    t = mean / scale
    p = float(2 * _scipy_stats.t.sf(abs(t), n - 1))
    return mean, (mean - quantile * scale, mean + quantile * scale), p, t, n - 1


def bayesian_correlated_t_test(
    a: Sequence[float], b: Sequence[float], rope: float, test_train_ratio: float
) -> tuple[float, float, float]:
    """Posterior (P(A better), P(equivalent), P(B better)) of the Bayesian correlated t-test on ``b - a``."""
    d = _differences(a, b)
    n = d.size
    mean, var = float(d.mean()), float(d.var(ddof=1))
    scale = math.sqrt(corrected_variance_factor(n, test_train_ratio) * var)
    if scale == 0.0:  # a point mass at the mean difference
        if rope == 0 and mean == 0:  # no equivalence region: a tie is split, as baycomp does
            return 0.5, 0.0, 0.5
        left, right = float(mean < -rope), float(mean > rope)
    else:
        left = float(_scipy_stats.t.cdf(-rope, n - 1, mean, scale))
        right = float(_scipy_stats.t.sf(rope, n - 1, mean, scale))
    return left, max(0.0, 1.0 - left - right), right


def compare_paired(
    a: Sequence[float], b: Sequence[float], folds: int, repeats: int = 1, rope: float = 0.01,
) -> PairedComparison:
    """Everything ``esc-sweep compare`` reports for two runs' values paired by (repeat, fold).

    ``a`` and ``b`` hold one value per (repeat, fold), in the same order; ``folds`` is k
    (the number of folds of the CV, which fixes the test-to-train ratio 1/(k-1)).
    """
    if folds < 2:
        raise ValueError("a comparison needs a cross-validation of at least 2 folds")
    if rope < 0:
        raise ValueError(f"rope must be >= 0, got {rope}")
    ratio = 1.0 / (folds - 1)
    mean, ci, p, t, df = corrected_t_test(a, b, ratio)
    left, equivalent, right = bayesian_correlated_t_test(a, b, rope, ratio)
    d = _differences(a, b)
    naive_half = (float(_scipy_stats.t.ppf(0.975, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
                  if d.size > 1 else float("nan"))
    return PairedComparison(
        mean_difference=mean, ci95=ci, p_value=p, t_statistic=t, df=df,
        prob_a_better=left, prob_equivalent=equivalent, prob_b_better=right, rope=rope,
        n_pairs=int(d.size), folds=int(folds), repeats=int(repeats), test_train_ratio=ratio,
        naive_ci95=(mean - naive_half, mean + naive_half),
    )
