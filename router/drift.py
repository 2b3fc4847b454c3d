"""Score drift: is the edge model seeing the inputs it was tuned on?

The tuner stores the calibration set's confidence histogram in the policy.
An agent keeps a window of live confidences binned the same way and compares
the two with the population stability index (PSI) and a two-sample
Kolmogorov–Smirnov statistic over the bins. Binning makes the KS statistic
a lower bound of the one on raw scores, so its p-value errs on the side of
"no drift".

Thresholds (:func:`classify`): warn when PSI ≥ 0.1 or the KS p-value < 0.01;
alarm when PSI ≥ 0.25, the usual rule of thumb for a shifted population.

Small samples. Those PSI thresholds were made for large samples. With a few
hundred scores on each side, sampling noise alone gives a PSI of about
(B − 1)·(1/n₁ + 1/n₂), some 0.08 for 20 bins and 450 + 500 scores, and far
more when many bins hold only a handful of reference scores. So the monitor
lets a PSI reading count only when the difference is also statistically
significant (:func:`psi_pvalue`: under no drift n₁n₂/(n₁ + n₂)·PSI is
approximately χ² with B − 1 degrees of freedom, on bins pooled until each
expects at least five scores). Binning matters too: equal-width bins put most
of a confident model's scores in the top bin, where drift first shows, so the
tuner stores a histogram with equal-mass bins (``spacing="quantile"`` in
:func:`calibration_histogram`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np

from edgecloud.router.policy import ScoreHistogram

__all__ = [
    "DriftMonitor",
    "DriftReport",
    "DriftStatus",
    "calibration_histogram",
    "classify",
    "histogram",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic",
    "psi",
    "psi_pvalue",
]

PSI_WARN = 0.1
"""PSI at or above which the score distribution has moved noticeably."""
PSI_ALARM = 0.25
"""PSI at or above which the score distribution has moved a lot."""
KS_WARN_PVALUE = 0.01
"""KS p-value below which the distributions differ significantly."""
PSI_SIGNIFICANCE = 0.01
"""PSI counts toward warn or alarm only when its p-value (:func:`psi_pvalue`) is below this."""
MIN_EXPECTED = 5.0
"""Expected scores per pooled bin that :func:`psi_pvalue` asks of the smaller histogram."""


def _bin_index(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each score; below the first edge → first bin, at or above the last → last bin."""
    index = np.searchsorted(edges, scores, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def histogram(scores: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Counts of ``scores`` per bin (int64, ``len(edges) - 1`` of them).

    Bins are ``[e_i, e_{i+1})``, the last one closed; scores outside the
    edges go to the end bins, and NaN scores are left out.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or np.any(np.diff(e) <= 0):
        raise ValueError("edges must be a strictly increasing list of at least two numbers")
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    return np.bincount(_bin_index(s, e), minlength=len(e) - 1).astype(np.int64)


def _proportions(
    expected_counts: np.ndarray | list[int], observed_counts: np.ndarray | list[int]
) -> tuple[np.ndarray, np.ndarray]:
    expected = np.asarray(expected_counts, dtype=np.float64)
    observed = np.asarray(observed_counts, dtype=np.float64)
    if expected.shape != observed.shape or expected.ndim != 1:
        raise ValueError(
            f"histograms must have the same bins, got shapes {expected.shape} and {observed.shape}"
        )
    if np.any(expected < 0) or np.any(observed < 0):
        raise ValueError("counts must be >= 0")
    if expected.sum() <= 0 or observed.sum() <= 0:
        raise ValueError("both histograms need at least one count")
    return expected / expected.sum(), observed / observed.sum()


def psi(
    expected_counts: np.ndarray | list[int],
    observed_counts: np.ndarray | list[int],
    eps: float = 1e-4,
) -> float:
    """Population stability index, Σ (q − p)·ln(q / p), over bin proportions.

    ``p`` are the expected (reference) proportions and ``q`` the observed
    ones; proportions below ``eps`` are raised to ``eps`` so empty bins do
    not make it infinite.
    """
    p, q = _proportions(expected_counts, observed_counts)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(
    expected_counts: np.ndarray | list[int], observed_counts: np.ndarray | list[int]
) -> float:
    """Largest difference between the two cumulative distributions at the bin edges."""
    p, q = _proportions(expected_counts, observed_counts)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def kolmogorov_sf(lam: float) -> float:
    """P(K > λ) for the Kolmogorov distribution.

    Uses Q(λ) = 2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²) for λ ≥ 1.18, and for
    smaller λ the equivalent form Q(λ) = 1 − (√(2π)/λ) Σ_{j≥1}
    exp(−(2j − 1)² π² / (8 λ²)), which converges quickly there.
    """
    if math.isnan(lam):
        raise ValueError("lambda must be a number, got NaN")
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:
        a = -(math.pi**2) / (8.0 * lam * lam)
        total = sum(math.exp(a * (2 * j - 1) ** 2) for j in range(1, 8))
        value = 1.0 - math.sqrt(2.0 * math.pi) / lam * total
    else:
        value = 2.0 * sum(
            (-1.0) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101)
        )
    return min(max(value, 0.0), 1.0)


def ks_pvalue(d: float, n_expected: int, n_observed: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic ``d``.

    With the effective size n = n₁n₂/(n₁ + n₂), returns Q((√n + 0.12 +
    0.11/√n)·d), Stephens' small-sample correction of Q(√n·d).
    """
    if n_expected <= 0 or n_observed <= 0:
        raise ValueError("both samples need at least one score")
    if not d >= 0.0:
        raise ValueError(f"a KS statistic is a number >= 0, got {d}")
    en = math.sqrt(n_expected * n_observed / (n_expected + n_observed))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def _chi2_sf(x: float, df: int) -> float:
    """P(χ²_df > x) by the Wilson–Hilferty cube-root normal approximation."""
    if x <= 0.0:
        return 1.0
    h = 2.0 / (9.0 * df)
    z = ((x / df) ** (1.0 / 3.0) - (1.0 - h)) / math.sqrt(h)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _pool(expected: np.ndarray, observed: np.ndarray, min_expected: float) -> np.ndarray:
    """Group labels that merge adjacent bins until each group expects ``min_expected`` scores.

    Expected counts come from the pooled proportions, scaled to the smaller
    histogram; a short last group joins the one before it.
    """
    total = expected + observed
    scale = min(expected.sum(), observed.sum()) / total.sum()
    labels = np.zeros(len(total), dtype=np.int64)
    group, filled = 0, 0.0
    for index, count in enumerate(total):
        labels[index] = group
        filled += count * scale
        if filled >= min_expected:
            group, filled = group + 1, 0.0
    if 0.0 < filled < min_expected and group > 0:
        labels[labels == group] = group - 1
    return labels


def psi_pvalue(
    expected_counts: np.ndarray | list[int],
    observed_counts: np.ndarray | list[int],
    min_expected: float = MIN_EXPECTED,
) -> float:
    """Approximate p-value of "no drift" for the PSI between two histograms.

    Adjacent bins are pooled until each expects at least ``min_expected``
    scores in the smaller histogram (the usual condition for a χ² test); on
    the pooled bins, n·PSI with n = n₁n₂/(n₁ + n₂) is asymptotically χ² with
    (pooled bins − 1) degrees of freedom when both histograms come from the
    same distribution, because PSI is the symmetrised Kullback–Leibler
    divergence and 2·KL ≈ the Pearson χ² divergence for nearby distributions.
    Returns 1 when fewer than two pooled bins remain.
    """
    expected = np.asarray(expected_counts, dtype=np.float64)
    observed = np.asarray(observed_counts, dtype=np.float64)
    _proportions(expected, observed)  # validates shapes and counts
    labels = _pool(expected, observed, min_expected)
    groups = int(labels.max()) + 1
    if groups < 2:
        return 1.0
    pooled_expected = np.bincount(labels, weights=expected, minlength=groups)
    pooled_observed = np.bincount(labels, weights=observed, minlength=groups)
    n1, n2 = expected.sum(), observed.sum()
    statistic = n1 * n2 / (n1 + n2) * psi(pooled_expected, pooled_observed)
    return min(max(_chi2_sf(statistic, groups - 1), 0.0), 1.0)


class DriftStatus(StrEnum):
    """How far the live scores have moved from the calibration ones."""

    STABLE = "stable"
    WARN = "warn"
    ALARM = "alarm"


def classify(psi: float, ks_p: float, psi_p: float = 0.0) -> DriftStatus:
    """Alarm when PSI ≥ 0.25; warn when PSI ≥ 0.1 or the KS p-value < 0.01; else stable.

    ``psi_p`` is the PSI's p-value (:func:`psi_pvalue`); the PSI rules apply
    only when it is below 0.01. The default, 0, takes every PSI at face
    value, as with large samples.
    """
    significant = psi_p < PSI_SIGNIFICANCE
    if significant and psi >= PSI_ALARM:
        return DriftStatus.ALARM
    if (significant and psi >= PSI_WARN) or ks_p < KS_WARN_PVALUE:
        return DriftStatus.WARN
    return DriftStatus.STABLE


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Drift of the live window against the reference histogram."""

    psi: float
    """Population stability index."""
    ks: float
    """Kolmogorov–Smirnov statistic over the bins."""
    ks_pvalue: float
    """Asymptotic p-value of ``ks``."""
    n: int
    """Live scores in the window."""
    status: DriftStatus
    """Verdict; always stable while the window holds too few scores."""
    psi_pvalue: float = 1.0
    """Approximate p-value of the PSI under no drift (see :func:`psi_pvalue`)."""


class DriftMonitor:
    """Compares a sliding window of live confidences with a reference histogram."""

    def __init__(self, reference: ScoreHistogram, window: int = 500, min_count: int = 50) -> None:
        if reference.total <= 0:
            raise ValueError("the reference histogram is empty")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        self.reference = reference
        """The calibration histogram compared against."""
        self.min_count = min_count
        """Scores needed in the window before the status can leave stable."""
        self._edges = np.asarray(reference.edges, dtype=np.float64)
        self._expected = np.asarray(reference.counts, dtype=np.int64)
        self._bins: deque[int] = deque(maxlen=window)
        self._window = window
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def observe(self, scores: np.ndarray | float) -> None:
        """Add confidences to the window (oldest ones drop out); NaN is ignored.

        Cheap on the request path: scores are kept as they come and binned
        in one go when the window is next read (or when a window's worth is
        waiting).
        """
        if type(scores) is np.ndarray and scores.ndim == 1 and scores.dtype == np.float64:
            s = scores  # the usual case: the router's confidence array, kept as it is
        else:
            s = np.atleast_1d(np.asarray(scores, dtype=np.float64)).ravel()
        self._pending.append(s)
        self._pending_rows += s.shape[0]
        if self._pending_rows >= self._window:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        s = np.concatenate(self._pending)[-self._window:]
        self._pending.clear()
        self._pending_rows = 0
        s = s[~np.isnan(s)]
        self._bins.extend(_bin_index(s, self._edges).tolist())

    def observed_counts(self) -> np.ndarray:
        """Counts per reference bin of the scores in the window."""
        self._fold()
        return np.bincount(
            np.fromiter(self._bins, dtype=np.int64, count=len(self._bins)),
            minlength=len(self._expected),
        ).astype(np.int64)

    def observed_histogram(self) -> ScoreHistogram:
        """The window as a histogram on the reference's edges."""
        return ScoreHistogram(edges=self.reference.edges, counts=self.observed_counts().tolist())

    def report(self) -> DriftReport:
        """PSI and KS of the window against the reference, and the verdict."""
        self._fold()
        n = len(self._bins)
        if n == 0:
            return DriftReport(psi=0.0, ks=0.0, ks_pvalue=1.0, n=0, status=DriftStatus.STABLE)
        observed = self.observed_counts()
        value = psi(self._expected, observed)
        d = ks_statistic(self._expected, observed)
        p = ks_pvalue(d, int(self._expected.sum()), n)
        psi_p = psi_pvalue(self._expected, observed)
        status = classify(value, p, psi_p) if n >= self.min_count else DriftStatus.STABLE
        return DriftReport(psi=value, ks=d, ks_pvalue=p, n=n, status=status, psi_pvalue=psi_p)


def calibration_histogram(
    scores: np.ndarray, bins: int = 20, *, spacing: Literal["uniform", "quantile"] = "uniform"
) -> ScoreHistogram:
    """Histogram of confidences over [0, 1] in ``bins`` bins.

    ``spacing="uniform"`` gives equal-width bins. ``spacing="quantile"`` puts
    the inner edges at the scores' quantiles, so each bin holds about the
    same share of them; quantiles that coincide (ties) or fall on 0 or 1 are
    dropped, which can leave fewer bins. Equal-mass bins resolve the region
    where the scores actually are, which equal-width bins do not for a model
    that is usually sure of itself.
    """
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    if spacing == "uniform":
        edges = [round(i / bins, 12) for i in range(bins + 1)]
    elif spacing == "quantile":
        s = np.asarray(scores, dtype=np.float64).ravel()
        s = s[~np.isnan(s)]
        if s.size == 0:
            raise ValueError("quantile bins need at least one score")
        inner = np.unique(np.quantile(s, np.arange(1, bins) / bins))
        inner = inner[(inner > 0.0) & (inner < 1.0)]
        edges = [0.0, *inner.tolist(), 1.0]
    else:
        raise ValueError(f"spacing must be 'uniform' or 'quantile', got {spacing!r}")
    return ScoreHistogram(edges=edges, counts=histogram(scores, edges).tolist())
