"""Operating curves and the temperature fit: hand-made examples, brute force, known values."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.router import fit_temperature, operating_curve
from edgecloud.router.curves import oracle_accuracy, oracle_escalation


def test_curve_on_a_hand_made_example() -> None:
    """Rows below each threshold take the cloud's correctness; the rest keep the edge's."""
    confidence = np.array([0.9, 0.2, 0.5, 0.5, 0.7])
    edge = np.array([True, False, True, False, True])
    cloud = np.array([True, True, False, True, True])
    curve = operating_curve(confidence, edge, cloud)
    np.testing.assert_allclose(curve.thresholds[:-1], [0.0, 0.2, 0.5, 0.7, 0.9])
    assert curve.thresholds[-1] > 1.0
    np.testing.assert_array_equal(curve.escalated, [0, 0, 1, 3, 4, 5])
    np.testing.assert_array_equal(curve.correct, [3, 3, 4, 4, 4, 4])
    np.testing.assert_allclose(curve.escalation, [0.0, 0.0, 0.2, 0.6, 0.8, 1.0])
    assert oracle_escalation(edge, cloud) == pytest.approx(0.4)
    assert oracle_accuracy(edge, cloud) == pytest.approx(1.0)
    assert curve.index_at_escalation(0.5) == 2  # 20% is the most that stays within 50%
    assert curve.index_reaching(4) == 2


def test_curve_matches_brute_force() -> None:
    """On random data with ties, every point equals a direct count at its threshold."""
    rng = np.random.default_rng(7)
    confidence = rng.integers(0, 40, size=300) / 40.0
    edge = rng.random(300) < 0.8
    cloud = rng.random(300) < 0.9
    curve = operating_curve(confidence, edge, cloud)
    for t, escalated, correct in zip(curve.thresholds, curve.escalated, curve.correct,
                                     strict=True):
        low = confidence < t
        assert escalated == low.sum()
        assert correct == np.where(low, cloud, edge).sum()


@pytest.mark.parametrize("true_t", [0.4, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    """Logits scaled by T, with labels drawn from the unscaled softmax, give back T."""
    rng = np.random.default_rng(11)
    z = rng.normal(0.0, 2.0, size=(6000, 5))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((6000, 1))).argmax(axis=1)
    assert fit_temperature(z * true_t, y, "logits") == pytest.approx(true_t, rel=0.08)
    distorted = p**true_t  # undone by the tuner's p ** (1 / T) at T = true_t
    distorted /= distorted.sum(axis=1, keepdims=True)
    assert fit_temperature(distorted, y, "probabilities") == pytest.approx(true_t, rel=0.08)
