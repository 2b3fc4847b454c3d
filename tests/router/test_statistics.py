"""Exact binomial tails and Clopper–Pearson bounds against closed forms and direct sums."""

from __future__ import annotations

import math

import pytest

from edgecloud.router.statistics import (
    beta_quantile,
    betainc,
    binomial_cdf,
    clopper_pearson_upper,
)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (1.0, 1.0, 0.3, 0.3),
        (3.0, 1.0, 0.6, 0.6**3),
        (1.0, 4.0, 0.2, 1.0 - 0.8**4),
        (7.5, 7.5, 0.5, 0.5),
        (2.0, 3.0, 0.5, 0.6875),
        (50.0, 400.0, 0.15, None),
    ],
)
def test_betainc_known_values(a: float, b: float, x: float, expected: float | None) -> None:
    """The regularized incomplete beta matches closed forms and its symmetry."""
    value = betainc(a, b, x)
    if expected is not None:
        assert value == pytest.approx(expected, rel=1e-10)
    assert value + betainc(b, a, 1.0 - x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.1), (3, 10, 0.3), (9, 20, 0.5),
                                           (2, 449, 0.01), (40, 100, 0.37)])
def test_binomial_cdf_matches_the_sum(k: int, n: int, p: float) -> None:
    """P(X ≤ k) equals the sum of binomial probabilities."""
    direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert binomial_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)


def test_clopper_pearson_known_values() -> None:
    """Upper bounds match 1 − δ^(1/n) at k = 0 and the textbook 5/20 interval's upper end."""
    assert clopper_pearson_upper(0, 449, 0.9) == pytest.approx(1 - 0.1 ** (1 / 449), rel=1e-9)
    assert clopper_pearson_upper(5, 20, 0.975) == pytest.approx(0.4910459, abs=1e-6)
    assert clopper_pearson_upper(20, 20, 0.9) == 1.0
    q = beta_quantile(0.3, 4.0, 9.0)
    assert betainc(4.0, 9.0, q) == pytest.approx(0.3, abs=1e-12)
