"""Tuning a routing policy from data.

Given the edge model's class scores, the cloud model's class scores and the
labels of a calibration set, the tuner fits a temperature, works out for
every confidence score and every threshold how many rows would go to the
cloud and how accurate the hybrid answer would be, and picks the policy that
meets the operator's target:

* ``target_escalation=R``: the most accurate policy that escalates at most a
  fraction ``R`` of the rows;
* ``target_gap=EPS``: the policy that escalates least while its accuracy is
  within ``EPS`` of the cloud's (optionally certified at a confidence level,
  see :func:`tune`).

Everything here is pure: numpy and pydantic, no file I/O, no printing, no
clock and no randomness. The caller reads the data, runs the models and
writes the policy.

Conventions. A row whose confidence is below the threshold escalates, and
the hybrid answer for it is the cloud's; every other row keeps the edge's
answer. The hybrid accuracy at a threshold is therefore
``(Σ_escalated cloud_correct + Σ_kept edge_correct) / N``.

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

from edgecloud.router.drift import calibration_histogram
from edgecloud.router.policy import Policy, Provenance, ScoreName, ScoresKind
from edgecloud.router.scores import score_rows

__all__ = [
    "REPORT_ESCALATIONS",
    "SCORE_NAMES",
    "TEMPERATURE_BOUNDS",
    "Curve",
    "OperatingPoint",
    "ScoreReport",
    "TuningError",
    "TuningReport",
    "beta_quantile",
    "betainc",
    "binomial_cdf",
    "clopper_pearson_upper",
    "field_arrays",
    "fit_temperature",
    "gap_closed",
    "operating_curve",
    "oracle_accuracy",
    "oracle_escalation",
    "tune",
    "tune_from_field",
]

SCORE_NAMES: tuple[str, ...] = (ScoreName.MARGIN, ScoreName.MAX_PROB, ScoreName.ENTROPY)
"""The scores the tuner compares, in the order that breaks ties."""

REPORT_ESCALATIONS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.30)
"""Escalation rates at which the report gives an operating point for every score."""

TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
"""The interval :func:`fit_temperature` searches."""

_PROB_FLOOR = 1e-12
"""Probabilities are floored here before taking logs for the temperature fit."""

LabelSource = Literal["labels", "cloud"]


class TuningError(ValueError):
    """The requested target cannot be met, or cannot be certified, on the given data."""


# --------------------------------------------------------------------------- exact binomial tails


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


def _largest_rejecting_count(n: int, eps: float, delta: float) -> int:
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


# --------------------------------------------------------------------------- temperature


def _log_scores(values: np.ndarray, kind: ScoresKind) -> np.ndarray:
    """Logits, or the logs of the (renormalised, floored) probabilities."""
    if kind is ScoresKind.LOGITS:
        return values.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.clip(values.astype(np.float64), 0.0, None)
        p = p / p.sum(axis=1, keepdims=True)
        return np.log(np.maximum(p, _PROB_FLOOR))


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_total - scaled[np.arange(len(y)), y]))


def fit_temperature(
    edge_scores: np.ndarray,
    y: np.ndarray,
    kind: ScoresKind | str,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The temperature that minimises the negative log-likelihood of ``y``.

    Logits are scaled as ``softmax(z / T)``; probabilities as ``p**(1/T)``
    renormalised, the same transforms :func:`router.scores.to_probabilities`
    applies (probabilities are floored at 1e-12 before the log so that a zero
    on the true class does not make the likelihood infinite). The likelihood
    is convex in 1/T, so a golden-section search over log T inside
    ``bounds`` finds its minimum; a minimum beyond a bound returns that bound.
    Rows with non-finite scores are left out.
    """
    kind = ScoresKind(kind)
    values = _as_matrix(edge_scores, "edge scores")
    labels = _as_labels(y, values.shape[0], values.shape[1])
    lo, hi = bounds
    if not 0.0 < lo < hi or not math.isfinite(hi):
        raise ValueError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    z = _log_scores(values, kind)
    usable = np.isfinite(z).all(axis=1)
    if not usable.any():
        raise ValueError("no row has finite class scores to fit a temperature on")
    z, labels = z[usable], labels[usable]

    def loss(u: float) -> float:
        return _nll(z, labels, math.exp(u))

    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > 1e-6:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    best = 0.5 * (a + b)
    return float(min(max(math.exp(best), lo), hi))


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True, eq=False)
class Curve:
    """Escalation rate and hybrid accuracy for every threshold, thresholds ascending.

    The thresholds are 0, every distinct finite confidence, and one value just
    above the largest of 1 and the confidences (everything escalates there).
    Arrays are read-only.
    """

    thresholds: np.ndarray
    """Candidate thresholds, ascending (float64)."""
    escalated: np.ndarray
    """Rows escalated at each threshold (confidence below it), non-decreasing (int64)."""
    correct: np.ndarray
    """Rows the hybrid answers correctly at each threshold (int64)."""
    n: int
    """Rows the curve is computed over."""

    @property
    def escalation(self) -> np.ndarray:
        """Fraction of rows escalated at each threshold."""
        return self.escalated / self.n

    @property
    def accuracy(self) -> np.ndarray:
        """Hybrid accuracy at each threshold."""
        return self.correct / self.n

    def index_at_escalation(self, rate: float, *, max_threshold: float = np.inf) -> int:
        """The point whose escalation is closest to ``rate`` without exceeding it.

        Ties go to the higher accuracy, then the lower threshold. Only
        thresholds up to ``max_threshold`` are considered; if none escalates
        few enough rows, the least-escalating one is returned.
        """
        allowed = self.thresholds <= max_threshold
        within = allowed & (self.escalated <= rate * self.n * (1.0 + 1e-12) + 1e-9)
        if not within.any():
            within = allowed & (self.escalated == self.escalated[allowed].min())
        return _best(np.flatnonzero(within), -self.escalated, self.correct, self.thresholds)

    def index_reaching(self, correct: float, *, max_threshold: float = np.inf) -> int | None:
        """The least-escalating point with at least ``correct`` rows right; None if none.

        Ties go to the higher accuracy, then the lower threshold.
        """
        allowed = self.thresholds <= max_threshold
        meets = allowed & (self.correct >= correct - 1e-9)
        if not meets.any():
            return None
        return _best(np.flatnonzero(meets), self.escalated, self.correct, self.thresholds)


def _best(
    candidates: np.ndarray, cost: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
) -> int:
    """Among ``candidates``: lowest cost, then most correct, then lowest threshold."""
    order = np.lexsort((thresholds[candidates], -correct[candidates], cost[candidates]))
    return int(candidates[order[0]])


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _sorted_counts(
    confidence: np.ndarray, flags: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Thresholds, escalated counts and, per flag array, cumulative counts by escalated count."""
    conf = np.where(np.isnan(confidence), -np.inf, confidence)
    order = np.argsort(conf, kind="stable")
    ranked = conf[order]
    finite = ranked[np.isfinite(ranked)]
    top = np.nextafter(max(1.0, float(finite.max()) if finite.size else 1.0), np.inf)
    thresholds = np.unique(np.concatenate([[0.0], finite, [top]]))
    escalated = np.searchsorted(ranked, thresholds, side="left").astype(np.int64)
    cumulative = [
        np.concatenate([[0], np.cumsum(flag[order], dtype=np.int64)]) for flag in flags
    ]
    return thresholds, escalated, cumulative


def _check_rows(confidence: Any, *masks: Any) -> tuple[np.ndarray, ...]:
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1 or conf.shape[0] == 0:
        raise ValueError(f"confidence must be a non-empty 1-D array, got shape {conf.shape}")
    out = [conf]
    for mask in masks:
        flags = np.asarray(mask, dtype=bool)
        if flags.shape != conf.shape:
            raise ValueError(
                f"correctness flags have shape {flags.shape} but confidence has shape "
                f"{conf.shape}"
            )
        out.append(flags)
    return tuple(out)


def operating_curve(
    confidence: np.ndarray, edge_correct: np.ndarray, cloud_correct: np.ndarray
) -> Curve:
    """Escalation rate and hybrid accuracy at every threshold, in O(N log N).

    Rows are sorted by confidence once; the rows escalated at threshold t are
    then a prefix of that order (its length found by binary search), and the
    hybrid's correct count is the cloud's correct count over the prefix plus
    the edge's over the rest, both read off cumulative sums. A NaN confidence
    escalates at every threshold, as in :func:`router.decide.decide`.
    """
    conf, edge, cloud = _check_rows(confidence, edge_correct, cloud_correct)
    thresholds, escalated, (cloud_cum, edge_cum) = _sorted_counts(conf, (cloud, edge))
    correct = cloud_cum[escalated] + (edge_cum[-1] - edge_cum[escalated])
    return Curve(
        thresholds=_readonly(thresholds),
        escalated=_readonly(escalated),
        correct=_readonly(correct.astype(np.int64)),
        n=int(conf.shape[0]),
    )


def oracle_escalation(edge_correct: np.ndarray, cloud_correct: np.ndarray) -> float:
    """Escalation of the oracle router: exactly the rows the edge gets wrong and the cloud right."""
    edge = np.asarray(edge_correct, dtype=bool)
    cloud = np.asarray(cloud_correct, dtype=bool)
    if edge.shape != cloud.shape or edge.size == 0:
        raise ValueError("edge and cloud correctness must be non-empty and of the same shape")
    return float(np.mean(~edge & cloud))


def oracle_accuracy(edge_correct: np.ndarray, cloud_correct: np.ndarray) -> float:
    """Accuracy of the oracle router: a row is right when either side gets it right."""
    edge = np.asarray(edge_correct, dtype=bool)
    cloud = np.asarray(cloud_correct, dtype=bool)
    if edge.shape != cloud.shape or edge.size == 0:
        raise ValueError("edge and cloud correctness must be non-empty and of the same shape")
    return float(np.mean(edge | cloud))


# --------------------------------------------------------------------------- report


def gap_closed(hybrid: float, edge: float, cloud: float) -> float:
    """(hybrid − edge) / (cloud − edge); NaN when the cloud is no better than the edge."""
    if cloud - edge <= 0.0:
        return math.nan
    return (hybrid - edge) / (cloud - edge)


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


def _as_matrix(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty [N, K] array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numbers, got dtype {array.dtype}")
    return array


def _as_labels(y: Any, n: int, k: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the scores, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels % 1 == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"labels must be class indices in [0, {k}), got {labels.min()}..{labels.max()}"
        )
    return labels


def _certify(
    curve: Curve, bad_after: np.ndarray, allowed: np.ndarray, kmax: int
) -> int | None:
    """Fixed-sequence scan: the lowest certified threshold, or None."""
    order = np.flatnonzero(allowed)[::-1]  # most escalation first
    passed = np.logical_and.accumulate(bad_after[order] <= kmax)
    if not passed[0]:
        return None
    return int(order[np.flatnonzero(passed)[-1]])


def tune(
    edge_scores: np.ndarray,
    cloud_scores: np.ndarray,
    y: np.ndarray,
    *,
    kind: ScoresKind | str,
    target_escalation: float | None = None,
    target_gap: float | None = None,
    confidence: float | None = None,
    base_policy: Policy | None = None,
    name: str | None = None,
    provenance: Provenance | None = None,
    temperature: float | None = None,
    scores: Sequence[str] | None = None,
) -> tuple[Policy, TuningReport]:
    """Tune a policy on labelled data; returns the policy and a report of what was seen.

    ``edge_scores`` and ``cloud_scores`` are ``[N, K]`` class scores (the edge's
    as probabilities or logits per ``kind``; only the cloud's argmax is used)
    and ``y`` the ``[N]`` true classes. Give exactly one target:

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
        cloud's by at most EPS on the population the data came from. For a
        threshold t let B(t) count the rows kept on the edge where the edge is
        wrong and the cloud right. Hybrid error − cloud error = P(hybrid wrong,
        cloud right) − P(hybrid right, cloud wrong) ≤ P(hybrid wrong, cloud
        right) =: p(t), and B(t) ~ Binomial(N, p(t)); so rejecting
        H0(t): p(t) > EPS when P(Binomial(N, EPS) ≤ B(t)) ≤ δ' (equivalently,
        when the one-sided Clopper–Pearson upper bound on p(t) is at most EPS)
        is a valid level-δ' test of "gap > EPS". Thresholds are tested in a
        fixed sequence (Learn then Test), from the most escalation to the
        least, stopping at the first one not rejected; the least-escalating
        rejected threshold is chosen. Fixed-sequence testing needs no
        multiplicity correction along the sequence; since B(t) and p(t) both
        grow as t falls, testing the data's distinct confidences is the same
        as testing every t of the continuum. The three candidate scores are
        three sequences, so δ is split over them (Bonferroni, δ' = δ / number
        of scores; pass ``scores=[...]`` with one name to test at δ). The
        temperature is fitted on the same data by likelihood, which ignores
        the routing target; for a guarantee that does not lean on that, fit
        it elsewhere and pass ``temperature=``. When no threshold is
        certified, :class:`TuningError` says the smallest EPS this data can
        certify at that confidence.

    The returned policy is ``base_policy`` (or a new one) with the chosen
    score, the temperature, the threshold, ``scores_kind`` and the chosen
    score's calibration histogram (20 equal-mass bins, see
    :func:`router.drift.calibration_histogram`) filled in; per-class thresholds
    are cleared (they were tuned for other scores), the budget and other
    sections are kept. ``name`` defaults to the base policy's name, else
    ``"task"``. ``provenance`` (edge model, cloud model, data, time) is
    stored with the tuner's summary in ``notes``.
    """
    return _tune(
        edge_scores,
        cloud_scores,
        y,
        kind=kind,
        target_escalation=target_escalation,
        target_gap=target_gap,
        confidence=confidence,
        base_policy=base_policy,
        name=name,
        provenance=provenance,
        temperature=temperature,
        scores=scores,
        label_source="labels",
    )


def _tune(
    edge_scores: np.ndarray,
    cloud_scores: np.ndarray,
    y: np.ndarray,
    *,
    kind: ScoresKind | str,
    target_escalation: float | None,
    target_gap: float | None,
    confidence: float | None,
    base_policy: Policy | None,
    name: str | None,
    provenance: Provenance | None,
    temperature: float | None,
    scores: Sequence[str] | None,
    label_source: LabelSource,
) -> tuple[Policy, TuningReport]:
    # Targets.
    if (target_escalation is None) == (target_gap is None):
        raise ValueError("give exactly one target: target_escalation or target_gap")
    if target_escalation is not None and not 0.0 < target_escalation < 1.0:
        raise ValueError(f"target_escalation must be in (0, 1), got {target_escalation}")
    if target_gap is not None and not 0.0 <= target_gap < 1.0:
        raise ValueError(f"target_gap must be in [0, 1), got {target_gap}")
    if confidence is not None:
        if target_gap is None:
            raise ValueError(
                "confidence certifies a target_gap; it cannot go with target_escalation"
            )
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    kind = ScoresKind(kind)
    candidates = tuple(ScoreName(s).value for s in (scores if scores is not None else SCORE_NAMES))
    if not candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"scores must name distinct scores, got {list(candidates)}")

    # Data.
    edge = _as_matrix(edge_scores, "edge scores")
    cloud = _as_matrix(cloud_scores, "cloud scores")
    n, k = edge.shape
    if cloud.shape != edge.shape:
        raise ValueError(
            f"cloud scores have shape {cloud.shape} but edge scores have shape {edge.shape}"
        )
    labels = _as_labels(y, n, k)

    # Temperature and scores.
    if temperature is None:
        temperature = fit_temperature(edge, labels, kind)
    elif not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    base = base_policy if base_policy is not None else Policy(name=name or "task", threshold=0.5)
    template = base.model_copy(update={"temperature": float(temperature), "scores_kind": kind})
    cloud_correct = (cloud.argmax(axis=1) == labels) & np.isfinite(cloud).all(axis=1)
    confidences: dict[str, np.ndarray] = {}
    edge_correct = np.zeros(n, dtype=bool)
    for score in candidates:
        conf, predicted = score_rows(template.model_copy(update={"score": ScoreName(score)}), edge)
        confidences[score] = conf
        edge_correct = predicted == labels
    edge_acc = float(edge_correct.mean())
    cloud_acc = float(cloud_correct.mean())
    bad = ~edge_correct & cloud_correct  # rows where keeping the edge answer costs accuracy

    reports: dict[str, ScoreReport] = {}
    bad_after: dict[str, np.ndarray] = {}
    for score in candidates:
        thresholds, escalated, (cloud_cum, edge_cum, bad_cum) = _sorted_counts(
            confidences[score], (cloud_correct, edge_correct, bad)
        )
        curve = Curve(
            thresholds=_readonly(thresholds),
            escalated=_readonly(escalated),
            correct=_readonly(cloud_cum[escalated] + (edge_cum[-1] - edge_cum[escalated])),
            n=n,
        )
        bad_after[score] = bad_cum[-1] - bad_cum[escalated]
        points = tuple(
            _point(curve, curve.index_at_escalation(rate, max_threshold=1.0), rate, edge_acc,
                   cloud_acc)
            for rate in REPORT_ESCALATIONS
        )
        reports[score] = ScoreReport(name=score, curve=curve, points=points)

    # Choice.
    certified_gap: float | None = None
    if target_escalation is not None:
        target = f"target_escalation={target_escalation:g}"
        picks = {
            s: reports[s].curve.index_at_escalation(target_escalation, max_threshold=1.0)
            for s in candidates
        }
        chosen = min(
            candidates,
            key=lambda s: (
                -reports[s].curve.correct[picks[s]],
                reports[s].curve.escalated[picks[s]],
                candidates.index(s),
            ),
        )
    else:
        assert target_gap is not None
        target = f"target_gap={target_gap:g}"
        picks = {}
        if confidence is None:
            needed = cloud_correct.sum() - target_gap * n
            for s in candidates:
                index = reports[s].curve.index_reaching(needed, max_threshold=1.0)
                if index is not None:
                    picks[s] = index
            if not picks:
                best = max(
                    int(r.curve.correct[r.curve.thresholds <= 1.0].max()) for r in reports.values()
                )
                raise TuningError(
                    f"no threshold brings the hybrid within {target_gap:g} of the cloud's "
                    f"accuracy on this data; the smallest gap reachable is "
                    f"{(cloud_correct.sum() - best) / n:.4f}"
                )
        else:
            target += f" at confidence {confidence:g}"
            delta = (1.0 - confidence) / len(candidates)
            kmax = _largest_rejecting_count(n, target_gap, delta)
            for s in candidates:
                curve = reports[s].curve
                index = _certify(curve, bad_after[s], curve.thresholds <= 1.0, kmax)
                if index is not None:
                    picks[s] = index
            if not picks:
                smallest = min(
                    clopper_pearson_upper(
                        int(bad_after[s][np.flatnonzero(reports[s].curve.thresholds <= 1.0)[-1]]),
                        n,
                        1.0 - delta,
                    )
                    for s in candidates
                )
                raise TuningError(
                    f"cannot certify a gap of {target_gap:g} to the cloud at confidence "
                    f"{confidence:g} with {n} rows; the smallest gap this data can certify at "
                    f"that confidence is {math.ceil(smallest * 1e4) / 1e4:.4f}"
                    + (f" (δ split over {len(candidates)} scores)" if len(candidates) > 1 else "")
                )
        chosen = min(
            picks,
            key=lambda s: (
                reports[s].curve.escalated[picks[s]],
                -reports[s].curve.correct[picks[s]],
                candidates.index(s),
            ),
        )
        if confidence is not None:
            certified_gap = clopper_pearson_upper(
                int(bad_after[chosen][picks[chosen]]), n, 1.0 - (1.0 - confidence) / len(candidates)
            )

    curve = reports[chosen].curve
    index = picks[chosen]
    threshold = float(curve.thresholds[index])
    notes: list[str] = []
    if label_source == "cloud":
        notes.append(
            "field data: labels are the cloud's answers, so accuracy here is agreement with the "
            "cloud (cloud-only is 100% by construction), not accuracy against the truth"
        )
    report = TuningReport(
        n=n,
        label_source=label_source,
        edge_accuracy=edge_acc,
        cloud_accuracy=cloud_acc,
        oracle_accuracy=oracle_accuracy(edge_correct, cloud_correct),
        oracle_escalation=oracle_escalation(edge_correct, cloud_correct),
        temperature=float(temperature),
        scores=reports,
        target=target,
        score=chosen,
        threshold=threshold,
        escalation=float(curve.escalation[index]),
        accuracy=float(curve.accuracy[index]),
        confidence=confidence,
        certified_gap=certified_gap,
        notes=tuple(notes),
    )

    summary = report.summary()
    if label_source == "cloud":
        summary += "; tuned on field data (labels are the cloud's answers)"
    given = provenance if provenance is not None else Provenance()
    document = base.model_dump()
    document.update(
        name=name or base.name,
        score=chosen,
        temperature=float(temperature),
        threshold=threshold,
        class_thresholds={},
        scores_kind=kind,
        calibration_histogram=calibration_histogram(
            confidences[chosen], bins=20, spacing="quantile"
        ).model_dump(),
        provenance=given.model_copy(
            update={"notes": f"{given.notes}; {summary}" if given.notes else summary}
        ).model_dump(),
    )
    return Policy.model_validate(document), report


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


# --------------------------------------------------------------------------- field data


def field_arrays(
    records: Iterable[tuple[Any, Any]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack field records into ``(edge_scores, cloud_scores, y_pseudo)``.

    Each record is one shadow sample an agent logged: the edge model's class
    scores for the row and the cloud model's. There are no labels in the
    field, so ``y_pseudo`` is the cloud's answer (its argmax). Caveat: tuning
    on these measures *agreement with the cloud*, not accuracy — cloud-only
    scores 100% by construction, and rows where both models are wrong look
    like edge successes. It is the right quantity when the cloud is taken as
    the reference; it overstates the hybrid's accuracy otherwise.
    """
    edge_rows: list[np.ndarray] = []
    cloud_rows: list[np.ndarray] = []
    for index, record in enumerate(records):
        try:
            edge_row, cloud_row = record
        except (TypeError, ValueError):
            raise ValueError(f"record {index} is not an (edge scores, cloud scores) pair") from None
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
        edge_rows.append(e)
        cloud_rows.append(c)
    if not edge_rows:
        raise ValueError("there are no field records")
    edge = np.stack(edge_rows)
    cloud = np.stack(cloud_rows)
    return edge, cloud, cloud.argmax(axis=1).astype(np.int64)


def tune_from_field(
    records: Iterable[tuple[Any, Any]],
    *,
    kind: ScoresKind | str,
    target_escalation: float | None = None,
    target_gap: float | None = None,
    confidence: float | None = None,
    base_policy: Policy | None = None,
    name: str | None = None,
    provenance: Provenance | None = None,
    temperature: float | None = None,
    scores: Sequence[str] | None = None,
) -> tuple[Policy, TuningReport]:
    """Tune from shadow samples logged in the field, with the cloud's answer as the label.

    Same targets and result as :func:`tune`, computed on
    :func:`field_arrays` of the records, so every "accuracy" is agreement
    with the cloud (see the caveat there; the report's ``label_source`` is
    ``cloud`` and its ``notes`` say so, and so does the policy's provenance).
    """
    edge, cloud, pseudo = field_arrays(records)
    return _tune(
        edge,
        cloud,
        pseudo,
        kind=kind,
        target_escalation=target_escalation,
        target_gap=target_gap,
        confidence=confidence,
        base_policy=base_policy,
        name=name,
        provenance=provenance,
        temperature=temperature,
        scores=scores,
        label_source="cloud",
    )
