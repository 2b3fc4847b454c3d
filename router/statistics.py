"""Exact binomial tails and Clopper–Pearson bounds, for certifying a tuned policy.

Special functions in plain Python (no scipy): the regularized incomplete beta
function by its continued fraction, the beta quantile by bisection, and the
binomial tail and one-sided Clopper–Pearson bound built on them. Pure: no
numpy arrays, no I/O.
"""

from __future__ import annotations

import math

__all__ = [
    "beta_quantile",
    "betainc",
    "binomial_cdf",
    "clopper_pearson_upper",
    "largest_rejecting_count",
]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1].

    Evaluated with the continued fraction on whichever side of the mean
    converges quickly, using I_x(a, b) = 1 − I_{1−x}(b, a) on the other.
    """
    if not (a > 0.0 and b > 0.0):
        raise ValueError(f"beta parameters must be > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0:
        return 0.0
    if x == 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return min(1.0, math.exp(log_front) * _betacf(a, b, x) / a)
    return max(0.0, 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b)


def beta_quantile(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b): the x with I_x(a, b) = q, found by bisection."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return hi


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), as I_{1−p}(n − k, k + 1)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    return betainc(float(n - k), float(k + 1), 1.0 - p)


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper–Pearson upper bound on a binomial proportion.

    The bound u with P(Binomial(n, u) ≤ k) = 1 − confidence, which is the
    ``confidence`` quantile of Beta(k + 1, n − k); 1 when ``k == n``. With
    ``k == 0`` it is 1 − (1 − confidence)^(1/n).
    """
    if n < 1:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, n], got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if k == n:
        return 1.0
    return beta_quantile(confidence, k + 1.0, float(n - k))


def largest_rejecting_count(n: int, eps: float, delta: float) -> int:
    """Largest k with P(Binomial(n, eps) ≤ k) ≤ delta, or −1 when even k = 0 is too many.

    The tail grows with k, so a bisection keeps cdf(lo) ≤ delta < cdf(hi).
    """
    if binomial_cdf(0, n, eps) > delta:
        return -1
    lo, hi = 0, n  # cdf(n) = 1 > delta
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if binomial_cdf(mid, n, eps) <= delta:
            lo = mid
        else:
            hi = mid
    return lo
