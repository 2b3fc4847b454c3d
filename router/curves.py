"""What a confidence threshold does to the hybrid: the temperature fit and operating curves.

:func:`fit_temperature` scales the edge's scores by the temperature that
maximises the likelihood of the labels. :func:`operating_curve` gives, for
every threshold of a confidence score, how many rows escalate and how many
the hybrid answers correctly; the oracle figures and :func:`gap_closed`
put those numbers next to edge-only and cloud-only.

Conventions. A row whose confidence is below the threshold escalates, and
the hybrid answer for it is the cloud's; every other row keeps the edge's
answer. The hybrid accuracy at a threshold is therefore
``(Σ_escalated cloud_correct + Σ_kept edge_correct) / N``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecloud.router.policy import ScoresKind

__all__ = [
    "TEMPERATURE_BOUNDS",
    "Curve",
    "check_labels",
    "check_scores",
    "fit_temperature",
    "gap_closed",
    "operating_curve",
    "operating_curve_with_losses",
    "oracle_accuracy",
    "oracle_escalation",
]

TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
"""The interval :func:`fit_temperature` searches."""

_PROB_FLOOR = 1e-12
"""Probabilities are floored here before taking logs for the temperature fit."""


# --------------------------------------------------------------------------- inputs


def check_scores(values: Any, what: str) -> np.ndarray:
    """``values`` as a non-empty numeric ``[N, K]`` array; ``what`` names it in messages."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty [N, K] array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numbers, got dtype {array.dtype}")
    return array


def check_labels(y: Any, n: int, k: int) -> np.ndarray:
    """``y`` as ``[n]`` int64 class indices in ``[0, k)``."""
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
    values = check_scores(edge_scores, "edge scores")
    labels = check_labels(y, values.shape[0], values.shape[1])
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
    return operating_curve_with_losses(confidence, edge_correct, cloud_correct)[0]


def operating_curve_with_losses(
    confidence: np.ndarray, edge_correct: np.ndarray, cloud_correct: np.ndarray
) -> tuple[Curve, np.ndarray]:
    """:func:`operating_curve`, and what keeping rows on the edge loses at each threshold.

    ``losses[i]`` counts the rows kept on the edge at ``thresholds[i]`` that
    the edge gets wrong and the cloud right (B(t) of the certification in
    :func:`router.selection.select_certified`); read-only int64, non-increasing.
    """
    conf, edge, cloud = _check_rows(confidence, edge_correct, cloud_correct)
    thresholds, escalated, (cloud_cum, edge_cum, lost_cum) = _sorted_counts(
        conf, (cloud, edge, ~edge & cloud)
    )
    correct = cloud_cum[escalated] + (edge_cum[-1] - edge_cum[escalated])
    curve = Curve(
        thresholds=_readonly(thresholds),
        escalated=_readonly(escalated),
        correct=_readonly(correct.astype(np.int64)),
        n=int(conf.shape[0]),
    )
    return curve, _readonly(lost_cum[-1] - lost_cum[escalated])


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


def gap_closed(hybrid: float, edge: float, cloud: float) -> float:
    """(hybrid − edge) / (cloud − edge); NaN when the cloud is no better than the edge."""
    if cloud - edge <= 0.0:
        return math.nan
    return (hybrid - edge) / (cloud - edge)
