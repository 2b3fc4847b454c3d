"""Tests for score drift: histograms, PSI, the KS statistic and its p-value, the monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.router.drift import (
    DriftMonitor,
    DriftStatus,
    calibration_histogram,
    classify,
    histogram,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic,
    psi,
)
from edgecloud.router.policy import Policy, ScoreHistogram, dump_policy, parse_policy


def test_histogram_bins_and_end_bins() -> None:
    """Scores fall in [e_i, e_i+1); out-of-range scores go to the end bins; NaN is dropped."""
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    scores = np.array([0.0, 0.1, 0.25, 0.6, 0.75, 1.0, -0.2, 1.3, np.nan])
    counts = histogram(scores, edges)
    np.testing.assert_array_equal(counts, [3, 1, 1, 3])
    assert counts.dtype == np.int64


def test_histogram_refuses_bad_edges() -> None:
    """Edges must be strictly increasing and at least two."""
    with pytest.raises(ValueError, match="strictly increasing"):
        histogram([0.5], [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        histogram([0.5], [0.0])


def test_psi_zero_for_identical_distributions() -> None:
    """Identical proportions give PSI 0, whatever the sample sizes."""
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-12)
    assert psi([10, 20, 30, 40], [100, 200, 300, 400]) == pytest.approx(0.0, abs=1e-12)


def test_psi_hand_computed() -> None:
    """[50, 50] against [25, 75] gives 0.25·ln 2 + 0.25·ln 1.5 ≈ 0.2747."""
    expected = 0.25 * math.log(2.0) + 0.25 * math.log(1.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)


def test_psi_large_for_shifted_scores_and_finite_with_empty_bins() -> None:
    """Scores moved to other bins give a large PSI, kept finite by the eps floor."""
    value = psi([0, 0, 10, 90], [90, 10, 0, 0])
    assert math.isfinite(value)
    assert value > 5.0


def test_psi_refuses_mismatched_or_empty() -> None:
    """Histograms must share bins and hold at least one count each."""
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one count"):
        psi([0, 0], [1, 2])


def test_ks_statistic_hand_computed() -> None:
    """The KS statistic is the largest gap between cumulative proportions."""
    assert ks_statistic([50, 50], [25, 75]) == pytest.approx(0.25)
    assert ks_statistic([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0
    assert ks_statistic([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("lam", "expected"),
    [
        (0.0, 1.0),
        (0.5, 0.9639452436648751),
        (1.0, 0.2699996716773546),
        (1.358, 0.0500268),  # the usual 5% critical value
        (1.628, 0.0099755),  # the usual 1% critical value
        (2.0, 2.0 * (math.exp(-8.0) - math.exp(-32.0) + math.exp(-72.0))),
    ],
)
def test_kolmogorov_distribution_known_values(lam: float, expected: float) -> None:
    """Q(λ) matches tabulated values on both sides of the series switch at 1.18."""
    assert kolmogorov_sf(lam) == pytest.approx(expected, rel=1e-5)


def test_kolmogorov_series_agree_at_the_switch() -> None:
    """The two series give the same value where the implementation switches between them."""
    below = kolmogorov_sf(1.18 - 1e-12)
    above = kolmogorov_sf(1.18)
    assert below == pytest.approx(above, rel=1e-9)
    values = [kolmogorov_sf(x) for x in np.linspace(0.05, 3.0, 60)]
    assert all(np.diff(values) <= 0.0)


def test_ks_pvalue_hand_computed() -> None:
    """With 200 and 200 scores, d = 0.1 gives Q((10 + 0.12 + 0.011)·0.1) by the series."""
    lam = (10.0 + 0.12 + 0.11 / 10.0) * 0.1
    by_hand = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in (1, 2, 3, 4))
    assert ks_pvalue(0.1, 200, 200) == pytest.approx(by_hand, rel=1e-6)
    assert ks_pvalue(0.0, 200, 200) == 1.0
    assert ks_pvalue(0.5, 200, 200) < 1e-20
    assert ks_pvalue(0.1, 10, 10) > ks_pvalue(0.1, 1000, 1000)


@pytest.mark.parametrize(
    ("psi_value", "ks_p", "status"),
    [
        (0.0, 0.5, DriftStatus.STABLE),
        (0.099, 0.011, DriftStatus.STABLE),
        (0.1, 0.5, DriftStatus.WARN),
        (0.05, 0.009, DriftStatus.WARN),
        (0.25, 0.5, DriftStatus.ALARM),
        (0.3, 0.0, DriftStatus.ALARM),
    ],
)
def test_classify(psi_value: float, ks_p: float, status: DriftStatus) -> None:
    """Warn at PSI ≥ 0.1 or KS p < 0.01, alarm at PSI ≥ 0.25."""
    assert classify(psi_value, ks_p) is status


def _reference(rng: np.random.Generator) -> ScoreHistogram:
    return calibration_histogram(rng.beta(5.0, 2.0, size=5000), bins=10)


def test_monitor_stable_on_the_calibration_distribution() -> None:
    """Live scores drawn like the calibration ones report stable with a small PSI."""
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(_reference(rng), window=500)
    monitor.observe(rng.beta(5.0, 2.0, size=800))
    report = monitor.report()
    assert report.n == 500
    assert report.psi < 0.05
    assert report.ks_pvalue > 0.01
    assert report.status is DriftStatus.STABLE


def test_monitor_alarms_on_shifted_scores_and_recovers() -> None:
    """Shifted scores raise an alarm; once the window refills with normal ones it is stable."""
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(_reference(rng), window=300)
    monitor.observe(rng.beta(2.0, 5.0, size=300))
    report = monitor.report()
    assert report.status is DriftStatus.ALARM
    assert report.psi > 0.25
    assert report.ks > 0.3
    assert report.ks_pvalue < 1e-6
    monitor.observe(rng.beta(5.0, 2.0, size=300))
    assert monitor.report().status is DriftStatus.STABLE


def test_monitor_stays_stable_until_enough_scores() -> None:
    """Fewer than min_count scores never leave stable, though the figures are reported."""
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(_reference(rng), window=500, min_count=50)
    assert monitor.report().n == 0
    assert monitor.report().status is DriftStatus.STABLE
    monitor.observe(np.zeros(49))
    report = monitor.report()
    assert report.n == 49
    assert report.psi > 0.25
    assert report.status is DriftStatus.STABLE
    monitor.observe(0.0)
    assert monitor.report().status is DriftStatus.ALARM


def test_monitor_observed_histogram_uses_reference_edges() -> None:
    """The live window comes back as a histogram on the reference's bins."""
    reference = ScoreHistogram(edges=[0.0, 0.5, 1.0], counts=[5, 5])
    monitor = DriftMonitor(reference, window=3)
    monitor.observe(np.array([0.1, 0.9, 0.8, 0.7]))
    assert monitor.observed_histogram() == ScoreHistogram(edges=[0.0, 0.5, 1.0], counts=[0, 3])


def test_monitor_refuses_empty_reference() -> None:
    """A reference histogram with no counts cannot be compared against."""
    with pytest.raises(ValueError, match="empty"):
        DriftMonitor(ScoreHistogram(edges=[0.0, 1.0], counts=[0]))


def test_calibration_histogram_in_a_policy() -> None:
    """The calibration histogram has uniform edges on [0, 1] and survives a policy round trip."""
    hist = calibration_histogram(np.array([0.0, 0.04, 0.5, 0.99, 1.0]), bins=20)
    assert len(hist.edges) == 21
    assert hist.edges[0] == 0.0 and hist.edges[-1] == 1.0
    np.testing.assert_allclose(np.diff(hist.edges), 0.05)
    assert hist.counts[0] == 2 and hist.counts[10] == 1 and hist.counts[19] == 2
    assert hist.total == 5
    policy = Policy(name="d", threshold=0.5, calibration_histogram=hist)
    assert parse_policy(dump_policy(policy)).calibration_histogram == hist
