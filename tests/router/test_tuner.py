"""Tests for the policy tuner: curves, temperature, exact binomial tails, targets, field data."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest

from edgecloud.examples.digits import load_split
from edgecloud.router import (
    BudgetPolicy,
    Policy,
    Provenance,
    ScoresKind,
    dump_policy,
    parse_policy,
    score_rows,
)
from edgecloud.router.tuner import (
    REPORT_ESCALATIONS,
    TuningError,
    beta_quantile,
    betainc,
    binomial_cdf,
    clopper_pearson_upper,
    field_arrays,
    fit_temperature,
    operating_curve,
    oracle_accuracy,
    oracle_escalation,
    tune,
    tune_from_field,
)

Run = Callable[[str, np.ndarray], np.ndarray]
Split = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def calibration(onnx_reference: Run) -> Split:
    """Edge scores, cloud scores and labels of the calibration split."""
    x, y = load_split("calibration")
    return onnx_reference("edge", x), onnx_reference("cloud", x), y


@pytest.fixture(scope="module")
def held_out(onnx_reference: Run) -> Split:
    """Edge scores, cloud scores and labels of the test split."""
    x, y = load_split("test")
    return onnx_reference("edge", x), onnx_reference("cloud", x), y


def _hybrid(policy: Policy, split: Split) -> tuple[float, float, float, float]:
    """Escalation, hybrid accuracy, edge accuracy and cloud accuracy of a policy on a split."""
    edge, cloud, y = split
    confidence, predicted = score_rows(policy, edge)
    escalated = confidence < policy.threshold
    answer = np.where(escalated, cloud.argmax(axis=1), predicted)
    return (
        float(escalated.mean()),
        float((answer == y).mean()),
        float((predicted == y).mean()),
        float((cloud.argmax(axis=1) == y).mean()),
    )


# Curves


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


# Exact binomial tails


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


# Temperature


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


# Targets on the bundled digits


def test_escalation_target_holds_on_the_test_split(calibration: Split, held_out: Split) -> None:
    """Tuned for 15% on calibration: test escalation within 2 points, ≥ 85% of the gap closed."""
    policy, report = tune(*calibration, kind="probabilities", target_escalation=0.15)
    assert report.escalation <= 0.15
    escalation, hybrid, edge, cloud = _hybrid(policy, held_out)
    assert escalation == pytest.approx(0.15, abs=0.02)
    assert (hybrid - edge) / (cloud - edge) >= 0.85


def test_gap_target_holds_on_the_test_split(calibration: Split, held_out: Split) -> None:
    """Tuned to within 0.5 points of the cloud: on the test split it is within 0.5 points."""
    policy, report = tune(*calibration, kind="probabilities", target_gap=0.005)
    assert report.accuracy >= report.cloud_accuracy - 0.005
    escalation, hybrid, _, cloud = _hybrid(policy, held_out)
    assert hybrid >= cloud - 0.005
    assert escalation < 0.5


def test_certified_gap(calibration: Split, held_out: Split) -> None:
    """At confidence 0.9 a 2-point gap is certified, and the bound holds on the test split."""
    policy, report = tune(*calibration, kind="probabilities", target_gap=0.02, confidence=0.9)
    assert report.certified_gap is not None and report.certified_gap <= 0.02
    assert report.confidence == 0.9
    _, hybrid, _, cloud = _hybrid(policy, held_out)
    assert hybrid >= cloud - 0.02


def test_impossible_certification_names_the_smallest_gap(calibration: Split) -> None:
    """A zero gap at δ = 0.01 is refused with the smallest certifiable gap, which does certify."""
    with pytest.raises(TuningError, match="smallest gap this data can certify") as caught:
        tune(*calibration, kind="probabilities", target_gap=0.0, confidence=0.99)
    smallest = float(re.search(r"certify at that confidence is ([0-9.]+)", str(caught.value))[1])
    assert 0.0 < smallest < 0.05
    _, report = tune(*calibration, kind="probabilities", target_gap=smallest, confidence=0.99)
    assert report.certified_gap <= smallest
    with pytest.raises(TuningError):
        tune(*calibration, kind="probabilities", target_gap=smallest - 0.001, confidence=0.99)


def test_report_and_policy(calibration: Split) -> None:
    """The report holds every score's reference points; the policy keeps the base's budget."""
    base = Policy(name="digits", threshold=0.3, class_thresholds={3: 0.9},
                  budget=BudgetPolicy(target_rate=0.2))
    provenance = Provenance(edge_model="edge.onnx", cloud_model="cloud.onnx", data="cal")
    policy, report = tune(*calibration, kind="probabilities", target_escalation=0.1,
                          base_policy=base, provenance=provenance)
    assert set(report.scores) == {"margin", "max_prob", "entropy"}
    for score in report.scores.values():
        assert [p.target_escalation for p in score.points] == list(REPORT_ESCALATIONS)
        assert all(p.escalation <= p.target_escalation for p in score.points)
    assert report.edge_accuracy < report.accuracy <= report.oracle_accuracy
    assert policy.name == "digits" and policy.budget.target_rate == 0.2
    assert policy.class_thresholds == {}
    assert policy.score == report.score and policy.threshold == report.threshold
    assert policy.temperature == pytest.approx(report.temperature)
    assert policy.provenance.edge_model == "edge.onnx"
    assert "target_escalation=0.1" in policy.provenance.notes
    assert policy.calibration_histogram is not None
    assert policy.calibration_histogram.total == report.n
    assert parse_policy(dump_policy(policy)) == policy


def test_targets_are_checked(calibration: Split) -> None:
    """Exactly one target, in range, and confidence only with a gap target."""
    with pytest.raises(ValueError, match="exactly one target"):
        tune(*calibration, kind="probabilities")
    with pytest.raises(ValueError, match="exactly one target"):
        tune(*calibration, kind="probabilities", target_escalation=0.1, target_gap=0.01)
    with pytest.raises(ValueError, match="target_escalation must be in"):
        tune(*calibration, kind="probabilities", target_escalation=1.5)
    with pytest.raises(ValueError, match="cannot go with target_escalation"):
        tune(*calibration, kind="probabilities", target_escalation=0.1, confidence=0.9)
    edge, cloud, y = calibration
    with pytest.raises(ValueError, match="labels must have shape"):
        tune(edge, cloud, y[:-1], kind="probabilities", target_gap=0.01)


# Field data


def test_tune_from_field_uses_the_cloud_as_label(held_out: Split) -> None:
    """Field records tune on agreement with the cloud: cloud-only scores 100% by construction."""
    edge, cloud, _ = held_out
    records = list(zip(edge.tolist(), cloud.tolist(), strict=True))
    policy, report = tune_from_field(records, kind=ScoresKind.PROBABILITIES,
                                     target_escalation=0.1, name="digits")
    agreement = float((edge.argmax(axis=1) == cloud.argmax(axis=1)).mean())
    assert report.label_source == "cloud"
    assert report.cloud_accuracy == 1.0
    assert report.edge_accuracy == pytest.approx(agreement)
    assert report.accuracy > agreement
    assert report.notes and "agreement" in report.notes[0]
    assert "field data" in policy.provenance.notes


def test_field_arrays_refuse_ragged_records() -> None:
    """Records whose class counts differ are refused with the record's index."""
    _, _, pseudo = field_arrays([([0.9, 0.1], [0.2, 0.8])])
    assert pseudo.tolist() == [1]
    with pytest.raises(ValueError, match="record 1"):
        field_arrays([([0.9, 0.1], [0.2, 0.8]), ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8])])
    with pytest.raises(ValueError, match="no field records"):
        field_arrays([])
