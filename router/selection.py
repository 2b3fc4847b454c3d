"""Picking the confidence score and threshold that meet a target, from their operating curves.

Each function takes one :class:`~router.curves.Curve` per candidate score, in
the order that breaks ties, and returns a :class:`Selection`. Only thresholds
up to :data:`MAX_THRESHOLD` are considered: above it every row escalates.

Errors::

    ValueError
    └── TuningError   (the target cannot be met, or cannot be certified, on this data)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgecloud.router.curves import Curve
from edgecloud.router.statistics import clopper_pearson_upper, largest_rejecting_count

__all__ = [
    "MAX_THRESHOLD",
    "Selection",
    "TuningError",
    "select_at_escalation",
    "select_certified",
    "select_within_gap",
]

MAX_THRESHOLD = 1.0
"""The largest threshold a tuned policy may get (confidences lie in [0, 1])."""


class TuningError(ValueError):
    """The requested target cannot be met, or cannot be certified, on the given data."""


@dataclass(frozen=True)
class Selection:
    """The chosen score, the index of its threshold on its curve, and the certified bound."""

    score: str
    index: int
    certified_gap: float | None = None
    """Upper confidence bound on the hybrid's error gap to the cloud, when certified."""


def select_at_escalation(curves: Mapping[str, Curve], rate: float) -> Selection:
    """The most accurate point that escalates at most ``rate`` of the rows.

    For each score, the threshold whose escalation is closest to ``rate``
    without exceeding it (ties: higher accuracy); the score with the highest
    accuracy there wins, then the one escalating less, then the earlier one.
    """
    picks = {
        score: curve.index_at_escalation(rate, max_threshold=MAX_THRESHOLD)
        for score, curve in curves.items()
    }
    order = list(curves)
    chosen = min(
        picks,
        key=lambda s: (
            -curves[s].correct[picks[s]],
            curves[s].escalated[picks[s]],
            order.index(s),
        ),
    )
    return Selection(score=chosen, index=picks[chosen])


def select_within_gap(curves: Mapping[str, Curve], gap: float, cloud_correct: int) -> Selection:
    """The least-escalating point whose accuracy is within ``gap`` of the cloud's.

    ``cloud_correct`` counts the rows the cloud answers correctly. Raises
    :class:`TuningError`, naming the smallest reachable gap, when no
    threshold of any score gets there.
    """
    n = _rows(curves)
    needed = cloud_correct - gap * n
    picks = {}
    for score, curve in curves.items():
        index = curve.index_reaching(needed, max_threshold=MAX_THRESHOLD)
        if index is not None:
            picks[score] = index
    if not picks:
        best = max(
            int(curve.correct[curve.thresholds <= MAX_THRESHOLD].max())
            for curve in curves.values()
        )
        raise TuningError(
            f"no threshold brings the hybrid within {gap:g} of the cloud's "
            f"accuracy on this data; the smallest gap reachable is "
            f"{(cloud_correct - best) / n:.4f}"
        )
    chosen = _least_escalating(curves, picks)
    return Selection(score=chosen, index=picks[chosen])


def select_certified(
    curves: Mapping[str, Curve], losses: Mapping[str, np.ndarray], gap: float, confidence: float
) -> Selection:
    """The least-escalating point whose gap to the cloud is certified at ``confidence``.

    ``losses[score]`` holds B(t) for the score's thresholds (see
    :func:`router.curves.operating_curve_with_losses`): the rows kept on the
    edge that the edge gets wrong and the cloud right. Hybrid error − cloud
    error ≤ P(hybrid wrong, cloud right) =: p(t), and B(t) ~ Binomial(N, p(t));
    so rejecting H0(t): p(t) > EPS when P(Binomial(N, EPS) ≤ B(t)) ≤ δ'
    (equivalently, when the one-sided Clopper–Pearson upper bound on p(t) is
    at most EPS) is a valid level-δ' test of "gap > EPS". Thresholds are
    tested in a fixed sequence (Learn then Test), from the most escalation to
    the least, stopping at the first one not rejected; the least-escalating
    rejected threshold is chosen. Fixed-sequence testing needs no
    multiplicity correction along the sequence; since B(t) and p(t) both grow
    as t falls, testing the data's distinct confidences is the same as testing
    every t of the continuum. Each candidate score is one sequence, so δ is
    split over them (Bonferroni, δ' = δ / number of scores).

    Raises :class:`TuningError`, naming the smallest gap this data can
    certify at that confidence, when no threshold is certified.
    """
    n = _rows(curves)
    delta = (1.0 - confidence) / len(curves)
    kmax = largest_rejecting_count(n, gap, delta)
    picks = {}
    for score, curve in curves.items():
        index = _certify(losses[score], curve.thresholds <= MAX_THRESHOLD, kmax)
        if index is not None:
            picks[score] = index
    if not picks:
        smallest = min(
            clopper_pearson_upper(
                int(losses[score][np.flatnonzero(curve.thresholds <= MAX_THRESHOLD)[-1]]),
                n,
                1.0 - delta,
            )
            for score, curve in curves.items()
        )
        raise TuningError(
            f"cannot certify a gap of {gap:g} to the cloud at confidence "
            f"{confidence:g} with {n} rows; the smallest gap this data can certify at "
            f"that confidence is {math.ceil(smallest * 1e4) / 1e4:.4f}"
            + (f" (δ split over {len(curves)} scores)" if len(curves) > 1 else "")
        )
    chosen = _least_escalating(curves, picks)
    bound = clopper_pearson_upper(int(losses[chosen][picks[chosen]]), n, 1.0 - delta)
    return Selection(score=chosen, index=picks[chosen], certified_gap=bound)


def _rows(curves: Mapping[str, Curve]) -> int:
    return next(iter(curves.values())).n


def _least_escalating(curves: Mapping[str, Curve], picks: Mapping[str, int]) -> str:
    """Among the picked points: fewest escalated, then most correct, then the earlier score."""
    order = list(curves)
    return min(
        picks,
        key=lambda s: (
            curves[s].escalated[picks[s]],
            -curves[s].correct[picks[s]],
            order.index(s),
        ),
    )


def _certify(losses: np.ndarray, allowed: np.ndarray, kmax: int) -> int | None:
    """Fixed-sequence scan: the lowest certified threshold, or None."""
    order = np.flatnonzero(allowed)[::-1]  # most escalation first
    passed = np.logical_and.accumulate(losses[order] <= kmax)
    if not passed[0]:
        return None
    return int(order[np.flatnonzero(passed)[-1]])
