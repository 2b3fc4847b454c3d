"""Tuning a routing policy from data.

Given the edge model's class scores, the cloud model's class scores and the
labels of a calibration set, the tuner fits a temperature, works out for
every confidence score and every threshold how many rows would go to the
cloud and how accurate the hybrid answer would be, and picks the policy that
meets the operator's :class:`TuningTarget`:

* ``target_escalation=R``: the most accurate policy that escalates at most a
  fraction ``R`` of the rows;
* ``target_gap=EPS``: the policy that escalates least while its accuracy is
  within ``EPS`` of the cloud's (optionally certified at a confidence level).

Everything here is pure: numpy and pydantic, no file I/O, no printing, no
clock and no randomness. The caller reads the data, runs the models and
writes the policy. The work is split over :mod:`router.statistics` (exact
binomial tails), :mod:`router.curves` (temperature fit and operating curves)
and :mod:`router.selection` (the choice for a target); this module ties them
together and reports.

Errors::

    ValueError
    └── TuningError   (the target cannot be met, or cannot be certified, on this data)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgecloud.router.curves import (
    Curve,
    check_labels,
    check_scores,
    fit_temperature,
    gap_closed,
    operating_curve_with_losses,
    oracle_accuracy,
    oracle_escalation,
)
from edgecloud.router.drift import calibration_histogram
from edgecloud.router.policy import Policy, Provenance, ScoreName, ScoresKind, TuningCurve
from edgecloud.router.scores import score_rows
from edgecloud.router.selection import (
    MAX_THRESHOLD,
    Selection,
    select_at_escalation,
    select_certified,
    select_within_gap,
)

__all__ = [
    "REPORT_ESCALATIONS",
    "SCORE_NAMES",
    "OperatingPoint",
    "ScoreReport",
    "TuningReport",
    "TuningTarget",
    "field_arrays",
    "tune",
    "tune_from_field",
]

SCORE_NAMES: tuple[str, ...] = (ScoreName.MARGIN, ScoreName.MAX_PROB, ScoreName.ENTROPY)
"""The scores the tuner compares, in the order that breaks ties."""

REPORT_ESCALATIONS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.30)
"""Escalation rates at which the report gives an operating point for every score."""

LabelSource = Literal["labels", "cloud"]


# --------------------------------------------------------------------------- target


@dataclass(frozen=True, kw_only=True)
class TuningTarget:
    """What to tune for, and what the tuned policy starts from.

    Give exactly one target:

    ``target_escalation=R`` (0 < R < 1)
        For each score, the threshold whose escalation on the data is closest
        to R without exceeding it (ties: higher accuracy); the score with the
        highest accuracy there wins.
    ``target_gap=EPS`` (0 ≤ EPS < 1)
        For each score, the least-escalating threshold whose hybrid accuracy
        is at least cloud accuracy − EPS; the score that escalates least wins.
        :class:`TuningError` if no threshold gets there.
    ``target_gap=EPS, confidence=1−δ``
        The same, but the gap is *certified*: with probability at least 1 − δ
        over the draw of the data, the chosen policy's error exceeds the
        cloud's by at most EPS on the population the data came from (the test
        is described at :func:`router.selection.select_certified`). δ is split
        over the candidate scores; pass ``scores=[...]`` with one name to test
        at δ. The temperature is fitted on the same data by likelihood, which
        ignores the routing target; for a guarantee that does not lean on
        that, fit it elsewhere and pass ``temperature=``. When no threshold is
        certified, :class:`TuningError` says the smallest EPS this data can
        certify at that confidence.

    Raises ``ValueError`` when the fields do not make one valid target.
    """

    kind: ScoresKind
    """What the edge model outputs: probabilities or logits (a string is converted)."""
    target_escalation: float | None = None
    """Escalate at most this fraction of the rows."""
    target_gap: float | None = None
    """Escalate least while within this much of the cloud's accuracy."""
    confidence: float | None = None
    """Certify ``target_gap`` at this level 1 − δ."""
    temperature: float | None = None
    """Use this temperature instead of fitting one."""
    scores: tuple[str, ...] | None = None
    """Candidate scores in the order that breaks ties (any sequence, kept as a tuple;
    default :data:`SCORE_NAMES`)."""
    base_policy: Policy | None = None
    """The policy to start from (budget, latency, breaker and other sections are kept)."""
    name: str | None = None
    """The task the policy routes (default: the base policy's, else ``"task"``)."""
    provenance: Provenance | None = None
    """Edge model, cloud model, data and time, stored with the tuner's summary."""

    def __post_init__(self) -> None:
        self._check_targets()
        object.__setattr__(self, "kind", ScoresKind(self.kind))
        temperature = self.temperature
        if temperature is not None and not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if self.scores is not None:
            names = tuple(ScoreName(s).value for s in self.scores)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"scores must name distinct scores, got {list(names)}")
            object.__setattr__(self, "scores", names)

    def _check_targets(self) -> None:
        escalation, gap, confidence = self.target_escalation, self.target_gap, self.confidence
        if (escalation is None) == (gap is None):
            raise ValueError("give exactly one target: target_escalation or target_gap")
        if escalation is not None and not 0.0 < escalation < 1.0:
            raise ValueError(f"target_escalation must be in (0, 1), got {escalation}")
        if gap is not None and not 0.0 <= gap < 1.0:
            raise ValueError(f"target_gap must be in [0, 1), got {gap}")
        if confidence is not None:
            if gap is None:
                raise ValueError(
                    "confidence certifies a target_gap; it cannot go with target_escalation"
                )
            if not 0.0 < confidence < 1.0:
                raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    @property
    def candidates(self) -> tuple[str, ...]:
        """The scores to compare, in the order that breaks ties."""
        return self.scores if self.scores is not None else tuple(SCORE_NAMES)

    def describe(self) -> str:
        """The target as given, for example ``target_gap=0.005 at confidence 0.9``."""
        if self.target_escalation is not None:
            return f"target_escalation={self.target_escalation:g}"
        text = f"target_gap={self.target_gap:g}"
        if self.confidence is not None:
            text += f" at confidence {self.confidence:g}"
        return text


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold of one score, described for people."""

    target_escalation: float | None
    """The escalation rate this point was picked for (None for the chosen policy's point)."""
    threshold: float
    escalation: float
    accuracy: float
    gap_to_cloud: float
    """Cloud-only accuracy minus hybrid accuracy."""
    gap_closed: float
    """(hybrid − edge) / (cloud − edge); NaN when the cloud is no better than the edge."""


@dataclass(frozen=True)
class ScoreReport:
    """A confidence score's operating curve and its points at :data:`REPORT_ESCALATIONS`."""

    name: str
    curve: Curve
    points: tuple[OperatingPoint, ...]


@dataclass(frozen=True)
class TuningReport:
    """What the tuner saw and what it chose, all on the tuning data."""

    n: int
    """Rows tuned on."""
    label_source: LabelSource
    """``labels`` (true labels) or ``cloud`` (field data: the cloud's answers stand in)."""
    edge_accuracy: float
    cloud_accuracy: float
    oracle_accuracy: float
    oracle_escalation: float
    temperature: float
    scores: Mapping[str, ScoreReport]
    """Per candidate score, its curve and reference points."""
    target: str
    """The target as given, for example ``target_gap=0.005``."""
    score: str
    """The chosen score."""
    threshold: float
    """The chosen threshold."""
    escalation: float
    """Escalation rate of the chosen policy on the tuning data."""
    accuracy: float
    """Hybrid accuracy of the chosen policy on the tuning data."""
    confidence: float | None = None
    """Confidence level of the certification, when one was asked for."""
    certified_gap: float | None = None
    """Upper confidence bound on the hybrid's error gap to the cloud at the chosen threshold."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Caveats worth showing to the operator."""
    human_labels: int = 0
    """Rows whose label a reviewer gave (field data: the rest are the cloud's answers)."""

    @property
    def gap_to_cloud(self) -> float:
        """Cloud-only accuracy minus the chosen policy's accuracy."""
        return self.cloud_accuracy - self.accuracy

    @property
    def gap_closed(self) -> float:
        """Share of the edge-to-cloud accuracy gap the chosen policy closes."""
        return gap_closed(self.accuracy, self.edge_accuracy, self.cloud_accuracy)

    def summary(self) -> str:
        """One line: the chosen policy and what it achieves on the tuning data."""
        what = "agreement with cloud" if self.label_source == "cloud" else "accuracy"
        line = (
            f"{self.target}: score={self.score} temperature={self.temperature:.4g} "
            f"threshold={self.threshold:.6g}; on {self.n} rows escalation={self.escalation:.4f} "
            f"{what}={self.accuracy:.4f} (edge {self.edge_accuracy:.4f}, "
            f"cloud {self.cloud_accuracy:.4f})"
        )
        if self.certified_gap is not None:
            line += f"; gap ≤ {self.certified_gap:.4f} at confidence {self.confidence:g}"
        return line


# --------------------------------------------------------------------------- tuning


def tune(
    edge_scores: np.ndarray, cloud_scores: np.ndarray, y: np.ndarray, target: TuningTarget
) -> tuple[Policy, TuningReport]:
    """Tune a policy on labelled data; returns the policy and a report of what was seen.

    ``edge_scores`` and ``cloud_scores`` are ``[N, K]`` class scores (the edge's
    as probabilities or logits per ``target.kind``; only the cloud's argmax is
    used) and ``y`` the ``[N]`` true classes. ``target`` says what to meet (see
    :class:`TuningTarget`).

    The returned policy is ``target.base_policy`` (or a new one) with the
    chosen score, the temperature, the threshold, ``scores_kind`` and the
    chosen score's calibration histogram (20 equal-mass bins, see
    :func:`router.drift.calibration_histogram`) filled in; per-class thresholds
    are cleared (they were tuned for other scores), the budget and other
    sections are kept. ``target.provenance`` (edge model, cloud model, data,
    time) is stored with the tuner's summary in ``notes``.
    """
    return _tune(edge_scores, cloud_scores, y, target, label_source="labels")


def tune_from_field(
    records: Iterable[tuple[Any, Any]], target: TuningTarget
) -> tuple[Policy, TuningReport]:
    """Tune from rows logged in the field, with the cloud's answer as the label where no
    reviewer gave one.

    Same targets and result as :func:`tune`, computed on
    :func:`field_arrays` of the records, so every "accuracy" is agreement
    with the cloud (see the caveat there; the report's ``label_source`` is
    ``cloud`` and its ``notes`` say so, and so does the policy's provenance),
    except on rows that carry a human label (a reviewer's), which count against
    that label; the report's ``human_labels`` says how many did, and when all did
    its ``label_source`` is ``labels``.
    """
    records = list(records)
    edge, cloud, y = field_arrays(records)
    human = sum(1 for record in records if len(record) == 3 and record[2] is not None)
    return _tune(edge, cloud, y, target,
                 label_source="labels" if human == len(records) else "cloud",
                 human_labels=human)


@dataclass(frozen=True)
class _Outcomes:
    """How each row fares: its confidence under every candidate score, and who is right."""

    confidences: dict[str, np.ndarray]
    edge_correct: np.ndarray
    cloud_correct: np.ndarray

    @property
    def n(self) -> int:
        return int(self.edge_correct.shape[0])


def _tune(
    edge_scores: np.ndarray,
    cloud_scores: np.ndarray,
    y: np.ndarray,
    target: TuningTarget,
    *,
    label_source: LabelSource,
    human_labels: int = 0,
) -> tuple[Policy, TuningReport]:
    edge, cloud, labels = _check_data(edge_scores, cloud_scores, y)
    temperature = (
        target.temperature
        if target.temperature is not None
        else fit_temperature(edge, labels, target.kind)
    )
    base = _base_policy(target)
    template = base.model_copy(
        update={"temperature": float(temperature), "scores_kind": target.kind}
    )
    outcomes = _outcomes(template, edge, cloud, labels, target.candidates)
    curves, losses = _curves(outcomes)
    selection = _select(target, curves, losses, outcomes)
    report = _report(target, outcomes, curves, selection, float(temperature), label_source,
                     human_labels)
    policy = _tuned_policy(base, target, report, outcomes.confidences[selection.score],
                           stored_curve(curves[selection.score], selection.index, report))
    return policy, report


def _check_data(
    edge_scores: np.ndarray, cloud_scores: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edge's and cloud's ``[N, K]`` scores and the ``[N]`` labels, checked."""
    edge = check_scores(edge_scores, "edge scores")
    cloud = check_scores(cloud_scores, "cloud scores")
    if cloud.shape != edge.shape:
        raise ValueError(
            f"cloud scores have shape {cloud.shape} but edge scores have shape {edge.shape}"
        )
    n, k = edge.shape
    return edge, cloud, check_labels(y, n, k)


def _base_policy(target: TuningTarget) -> Policy:
    if target.base_policy is not None:
        return target.base_policy
    return Policy(name=target.name or "task", threshold=0.5)


def _outcomes(
    template: Policy,
    edge: np.ndarray,
    cloud: np.ndarray,
    labels: np.ndarray,
    candidates: Sequence[str],
) -> _Outcomes:
    """Score the edge's rows under each candidate score of ``template``."""
    confidences: dict[str, np.ndarray] = {}
    edge_correct = np.zeros(len(labels), dtype=bool)
    for score in candidates:
        conf, predicted = score_rows(template.model_copy(update={"score": ScoreName(score)}), edge)
        confidences[score] = conf
        edge_correct = predicted == labels
    cloud_correct = (cloud.argmax(axis=1) == labels) & np.isfinite(cloud).all(axis=1)
    return _Outcomes(confidences=confidences, edge_correct=edge_correct,
                     cloud_correct=cloud_correct)


def _curves(outcomes: _Outcomes) -> tuple[dict[str, Curve], dict[str, np.ndarray]]:
    """Per candidate score, its operating curve and what keeping rows on the edge loses."""
    curves: dict[str, Curve] = {}
    losses: dict[str, np.ndarray] = {}
    for score, confidence in outcomes.confidences.items():
        curves[score], losses[score] = operating_curve_with_losses(
            confidence, outcomes.edge_correct, outcomes.cloud_correct
        )
    return curves, losses


def _select(
    target: TuningTarget,
    curves: Mapping[str, Curve],
    losses: Mapping[str, np.ndarray],
    outcomes: _Outcomes,
) -> Selection:
    if target.target_escalation is not None:
        return select_at_escalation(curves, target.target_escalation)
    assert target.target_gap is not None
    if target.confidence is None:
        return select_within_gap(curves, target.target_gap, int(outcomes.cloud_correct.sum()))
    return select_certified(curves, losses, target.target_gap, target.confidence)


def _report(
    target: TuningTarget,
    outcomes: _Outcomes,
    curves: Mapping[str, Curve],
    selection: Selection,
    temperature: float,
    label_source: LabelSource,
    human_labels: int = 0,
) -> TuningReport:
    edge_acc = float(outcomes.edge_correct.mean())
    cloud_acc = float(outcomes.cloud_correct.mean())
    curve, index = curves[selection.score], selection.index
    notes: list[str] = []
    if human_labels:
        notes.append(f"{human_labels} of {outcomes.n} rows carry human labels (a reviewer's), "
                     "used instead of the cloud's answer")
    if label_source == "cloud":
        notes.append(
            "field data: labels are the cloud's answers"
            + (" where no reviewer gave one" if human_labels else "")
            + ", so accuracy here is agreement with the cloud (cloud-only is 100% by "
            "construction), not accuracy against the truth"
        )
    return TuningReport(
        n=outcomes.n,
        label_source=label_source,
        edge_accuracy=edge_acc,
        cloud_accuracy=cloud_acc,
        oracle_accuracy=oracle_accuracy(outcomes.edge_correct, outcomes.cloud_correct),
        oracle_escalation=oracle_escalation(outcomes.edge_correct, outcomes.cloud_correct),
        temperature=temperature,
        scores={
            score: _score_report(score, score_curve, edge_acc, cloud_acc)
            for score, score_curve in curves.items()
        },
        target=target.describe(),
        score=selection.score,
        threshold=float(curve.thresholds[index]),
        escalation=float(curve.escalation[index]),
        accuracy=float(curve.accuracy[index]),
        confidence=target.confidence,
        certified_gap=selection.certified_gap,
        notes=tuple(notes),
        human_labels=human_labels,
    )


def _score_report(name: str, curve: Curve, edge_acc: float, cloud_acc: float) -> ScoreReport:
    points = tuple(
        _point(curve, curve.index_at_escalation(rate, max_threshold=MAX_THRESHOLD), rate,
               edge_acc, cloud_acc)
        for rate in REPORT_ESCALATIONS
    )
    return ScoreReport(name=name, curve=curve, points=points)


def _point(
    curve: Curve, index: int, rate: float | None, edge_acc: float, cloud_acc: float
) -> OperatingPoint:
    accuracy = float(curve.accuracy[index])
    return OperatingPoint(
        target_escalation=rate,
        threshold=float(curve.thresholds[index]),
        escalation=float(curve.escalation[index]),
        accuracy=accuracy,
        gap_to_cloud=cloud_acc - accuracy,
        gap_closed=gap_closed(accuracy, edge_acc, cloud_acc),
    )


CURVE_POINTS = 64
"""Points of the chosen score's operating curve stored with a tuned policy."""


def stored_curve(curve: Curve, chosen: int, report: TuningReport) -> TuningCurve:
    """``curve`` thinned to about :data:`CURVE_POINTS` points for the policy document.

    A point every ``1/CURVE_POINTS`` of the rows escalated (the first threshold that
    escalates that many), plus both ends and the chosen point, so the drawn curve
    passes exactly through what the policy does.
    """
    last = len(curve.thresholds) - 1
    steps = np.linspace(0.0, float(curve.n), CURVE_POINTS)
    picks = np.searchsorted(curve.escalated, steps, side="left")
    picks = np.unique(np.clip(np.concatenate([picks, [0, chosen, last]]), 0, last))
    return TuningCurve(
        rows=curve.n,
        labels=report.label_source,
        edge_accuracy=report.edge_accuracy,
        cloud_accuracy=report.cloud_accuracy,
        thresholds=[float(curve.thresholds[i]) for i in picks],
        escalation=[float(curve.escalation[i]) for i in picks],
        accuracy=[float(curve.accuracy[i]) for i in picks],
    )


def _tuned_policy(
    base: Policy, target: TuningTarget, report: TuningReport, confidence: np.ndarray,
    curve: TuningCurve,
) -> Policy:
    """``base`` with the chosen score, temperature, threshold, calibration histogram and
    operating curve."""
    summary = report.summary()
    if report.label_source == "cloud":
        summary += "; tuned on field data (labels are the cloud's answers)"
    given = target.provenance if target.provenance is not None else Provenance()
    document = base.model_dump()
    document.update(
        name=target.name or base.name,
        score=report.score,
        temperature=report.temperature,
        threshold=report.threshold,
        class_thresholds={},
        scores_kind=target.kind,
        calibration_histogram=calibration_histogram(
            confidence, bins=20, spacing="quantile"
        ).model_dump(),
        provenance=given.model_copy(
            update={"notes": f"{given.notes}; {summary}" if given.notes else summary}
        ).model_dump(),
        tuning_curve=curve.model_dump(),
    )
    return Policy.model_validate(document)


# --------------------------------------------------------------------------- field data


def field_arrays(
    records: Iterable[tuple[Any, Any]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack field records into ``(edge_scores, cloud_scores, y_pseudo)``.

    Each record is one row an agent logged: the edge model's class scores for
    the row and the cloud model's, and optionally a third item, a reviewer's
    label (an int, or None). ``y_pseudo`` is that label where there is one, and
    the cloud's answer (its argmax) elsewhere. Caveat: tuning
    on these measures *agreement with the cloud*, not accuracy — cloud-only
    scores 100% by construction, and rows where both models are wrong look
    like edge successes. It is the right quantity when the cloud is taken as
    the reference; it overstates the hybrid's accuracy otherwise.
    """
    edge_rows: list[np.ndarray] = []
    cloud_rows: list[np.ndarray] = []
    labels: dict[int, int] = {}
    for index, record in enumerate(records):
        try:
            items = tuple(record)
            edge_row, cloud_row = items[:2]
        except (TypeError, ValueError):
            raise ValueError(f"record {index} is not an (edge scores, cloud scores) pair") from None
        label = items[2] if len(items) == 3 else None
        if len(items) > 3 or (label is not None and (
                isinstance(label, bool) or not isinstance(label, int | np.integer))):
            raise ValueError(f"record {index}: a label must be a class number")
        e = np.asarray(edge_row, dtype=np.float64)
        c = np.asarray(cloud_row, dtype=np.float64)
        if e.ndim != 1 or c.ndim != 1 or e.size == 0:
            raise ValueError(f"record {index}: scores must be non-empty lists of numbers")
        if e.shape != c.shape:
            raise ValueError(
                f"record {index}: edge has {e.size} class scores but cloud has {c.size}"
            )
        if edge_rows and e.shape != edge_rows[0].shape:
            raise ValueError(
                f"record {index} has {e.size} classes but the first record has "
                f"{edge_rows[0].size}"
            )
        if not np.isfinite(c).all():
            raise ValueError(f"record {index}: the cloud scores are not all finite")
        if label is not None:
            if not 0 <= int(label) < c.size:
                raise ValueError(f"record {index}: label {label} is not one of the "
                                 f"{c.size} classes")
            labels[index] = int(label)
        edge_rows.append(e)
        cloud_rows.append(c)
    if not edge_rows:
        raise ValueError("there are no field records")
    edge = np.stack(edge_rows)
    cloud = np.stack(cloud_rows)
    y = cloud.argmax(axis=1).astype(np.int64)
    for index, label in labels.items():
        y[index] = label
    return edge, cloud, y
