"""Tests for the policy tuner: targets on the bundled digits, the target object, field data."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgecloud.examples.digits import load_split
from edgecloud.router import (
    BudgetPolicy,
    Policy,
    Provenance,
    ScoresKind,
    TuningCurve,
    TuningError,
    TuningTarget,
    dump_policy,
    field_arrays,
    parse_policy,
    score_rows,
    tune,
    tune_from_field,
)
from edgecloud.router.tuner import REPORT_ESCALATIONS

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


def _target(**fields: Any) -> TuningTarget:
    """A target for the digits models, whose edge model outputs probabilities."""
    return TuningTarget(kind=ScoresKind.PROBABILITIES, **fields)


# Targets on the bundled digits


def test_escalation_target_holds_on_the_test_split(calibration: Split, held_out: Split) -> None:
    """Tuned for 15% on calibration: test escalation within 2 points, ≥ 85% of the gap closed."""
    policy, report = tune(*calibration, _target(target_escalation=0.15))
    assert report.escalation <= 0.15
    escalation, hybrid, edge, cloud = _hybrid(policy, held_out)
    assert escalation == pytest.approx(0.15, abs=0.02)
    assert (hybrid - edge) / (cloud - edge) >= 0.85


def test_gap_target_holds_on_the_test_split(calibration: Split, held_out: Split) -> None:
    """Tuned to within 0.5 points of the cloud: on the test split it is within 0.5 points."""
    policy, report = tune(*calibration, _target(target_gap=0.005))
    assert report.accuracy >= report.cloud_accuracy - 0.005
    escalation, hybrid, _, cloud = _hybrid(policy, held_out)
    assert hybrid >= cloud - 0.005
    assert escalation < 0.5


def test_certified_gap(calibration: Split, held_out: Split) -> None:
    """At confidence 0.9 a 2-point gap is certified, and the bound holds on the test split."""
    policy, report = tune(*calibration, _target(target_gap=0.02, confidence=0.9))
    assert report.certified_gap is not None and report.certified_gap <= 0.02
    assert report.confidence == 0.9
    _, hybrid, _, cloud = _hybrid(policy, held_out)
    assert hybrid >= cloud - 0.02


def test_impossible_certification_names_the_smallest_gap(calibration: Split) -> None:
    """A zero gap at δ = 0.01 is refused with the smallest certifiable gap, which does certify."""
    with pytest.raises(TuningError, match="smallest gap this data can certify") as caught:
        tune(*calibration, _target(target_gap=0.0, confidence=0.99))
    smallest = float(re.search(r"certify at that confidence is ([0-9.]+)", str(caught.value))[1])
    assert 0.0 < smallest < 0.05
    _, report = tune(*calibration, _target(target_gap=smallest, confidence=0.99))
    assert report.certified_gap <= smallest
    with pytest.raises(TuningError):
        tune(*calibration, _target(target_gap=smallest - 0.001, confidence=0.99))


def test_report_and_policy(calibration: Split) -> None:
    """The report holds every score's reference points; the policy keeps the base's budget."""
    base = Policy(name="digits", threshold=0.3, class_thresholds={3: 0.9},
                  budget=BudgetPolicy(target_rate=0.2))
    provenance = Provenance(edge_model="edge.onnx", cloud_model="cloud.onnx", data="cal")
    policy, report = tune(*calibration, _target(target_escalation=0.1, base_policy=base,
                                                provenance=provenance))
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


def test_policy_stores_the_chosen_curve_through_the_chosen_point(calibration: Split) -> None:
    """The tuned policy carries its score's operating curve, thinned, from nothing escalated
    to everything, and the chosen threshold's point is on it with the report's figures."""
    policy, report = tune(*calibration, _target(target_gap=0.005, name="digits"))
    curve = policy.tuning_curve
    assert curve is not None and curve.rows == report.n and curve.labels == "labels"
    assert 10 <= len(curve.thresholds) <= 70
    assert curve.escalation[0] == 0.0 and curve.escalation[-1] == 1.0
    assert curve.accuracy[0] == pytest.approx(report.edge_accuracy)
    assert curve.accuracy[-1] == pytest.approx(report.cloud_accuracy)
    assert curve.thresholds == sorted(curve.thresholds)
    chosen = curve.thresholds.index(report.threshold)
    assert curve.escalation[chosen] == pytest.approx(report.escalation)
    assert curve.accuracy[chosen] == pytest.approx(report.accuracy)
    assert parse_policy(dump_policy(policy)) == policy
    uneven = {**curve.model_dump(), "accuracy": curve.accuracy[:-1]}
    with pytest.raises(ValueError, match="one entry per point"):
        TuningCurve.model_validate(uneven)


def test_targets_are_checked(calibration: Split) -> None:
    """Exactly one target, in range, and confidence only with a gap target."""
    with pytest.raises(ValueError, match="exactly one target"):
        tune(*calibration, _target())
    with pytest.raises(ValueError, match="exactly one target"):
        tune(*calibration, _target(target_escalation=0.1, target_gap=0.01))
    with pytest.raises(ValueError, match="target_escalation must be in"):
        tune(*calibration, _target(target_escalation=1.5))
    with pytest.raises(ValueError, match="cannot go with target_escalation"):
        tune(*calibration, _target(target_escalation=0.1, confidence=0.9))
    edge, cloud, y = calibration
    with pytest.raises(ValueError, match="labels must have shape"):
        tune(edge, cloud, y[:-1], _target(target_gap=0.01))


def test_one_frozen_target_drives_both_entry_points(held_out: Split) -> None:
    """One TuningTarget serves tune and tune_from_field alike; it is immutable and names itself."""
    edge, cloud, y = held_out
    target = _target(target_escalation=0.1, scores=["margin", "entropy"])
    _, labelled = tune(edge, cloud, y, target)
    _, field = tune_from_field(zip(edge.tolist(), cloud.tolist(), strict=True), target)
    assert labelled.target == field.target == "target_escalation=0.1"
    assert set(labelled.scores) == set(field.scores) == {"margin", "entropy"}
    assert target.scores == ("margin", "entropy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.target_gap = 0.01  # type: ignore[misc]
    certified = _target(target_gap=0.02, confidence=0.9)
    assert certified.describe() == "target_gap=0.02 at confidence 0.9"


# Field data


def test_tune_from_field_uses_the_cloud_as_label(held_out: Split) -> None:
    """Field records tune on agreement with the cloud: cloud-only scores 100% by construction."""
    edge, cloud, _ = held_out
    records = list(zip(edge.tolist(), cloud.tolist(), strict=True))
    policy, report = tune_from_field(records, TuningTarget(kind=ScoresKind.PROBABILITIES,
                                                           target_escalation=0.1, name="digits"))
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
