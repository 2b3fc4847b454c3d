"""The routing decision: edge or cloud, and why.

:func:`decide` is a pure function of the policy, the rows' confidences, the
request's context and the run-time signals. It returns one frozen
:class:`Decision` per row; falling back is a decision with a reason, never a
side effect.

Rules, per row, first match wins:

1. ``route=edge`` or ``route=cloud`` in the request → that side, ``forced``.
2. Confidence at or above the base threshold (the request's override, else
   the policy's per-class or global threshold) → ``edge``/``confident``,
   unless the shadow sampler picked the row and the cloud is available with
   time to spare → ``cloud``/``sampled``.
3. Below the base threshold:
   cloud unavailable (breaker open) → ``edge``/``cloud_unavailable``;
   expected round trip longer than the time left → ``edge``/``no_time``;
   at or above the budget-lowered threshold → ``edge``/``budget_exhausted``;
   otherwise → ``cloud``/``low_confidence``.

The escalation budget may only lower the threshold here: a positive shift
is unused credit in the tracker and never sends extra rows to the cloud, and
a request's own threshold override is never shifted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from edgecloud.router.policy import Policy
from edgecloud.router.scores import score_rows

__all__ = [
    "Decision",
    "Reason",
    "RequestContext",
    "Route",
    "RouteOverride",
    "Signals",
    "decide",
    "escalate_mask",
    "route_rows",
]


class Route(StrEnum):
    """Which side answered."""

    EDGE = "edge"
    CLOUD = "cloud"
    EDGE_FALLBACK = "edge_fallback"
    """The row was escalated, the cloud failed, and the edge answer was returned."""


class Reason(StrEnum):
    """Why a row went where it went."""

    CONFIDENT = "confident"
    LOW_CONFIDENCE = "low_confidence"
    NO_TIME = "no_time"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    SAMPLED = "sampled"
    FORCED = "forced"
    CLOUD_FAILED = "cloud_failed"
    """Set by the agent (with route ``edge_fallback``) when an escalation fails."""


class RouteOverride(StrEnum):
    """A request's ``route`` parameter."""

    AUTO = "auto"
    EDGE = "edge"
    CLOUD = "cloud"


class Decision(NamedTuple):
    """Where one row goes and why: an immutable value.

    A named tuple rather than a dataclass: one is made per row on the request
    path, and a tuple costs a third of a frozen dataclass to build.
    """

    route: Route
    reason: Reason
    score: float
    """The row's confidence."""
    threshold: float
    """The threshold the row's confidence was held against (after any budget shift)."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the request itself says about routing."""

    route: RouteOverride = RouteOverride.AUTO
    """Force a side, or let the router choose."""
    threshold_override: float | None = None
    """The request's ``confidence_threshold``: replaces the policy's thresholds for it."""
    time_left_s: float | None = None
    """Seconds left before the request's deadline; None means the policy's default budget."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "route", RouteOverride(self.route))
        override = self.threshold_override
        if override is not None and not (math.isfinite(override) and 0.0 <= override <= 1.0):
            raise ValueError(f"confidence threshold must be in [0, 1], got {override}")
        if self.time_left_s is not None and math.isnan(self.time_left_s):
            raise ValueError("time left must be a number, got NaN")


@dataclass(frozen=True, slots=True)
class Signals:
    """Run-time signals the router takes into account (see :mod:`router.signals`)."""

    cloud_available: bool = True
    """False while the circuit breaker is open."""
    cloud_rtt_s: float | None = None
    """Expected cloud round trip in seconds; None (unknown) is taken to fit any budget."""
    threshold_shift: float = 0.0
    """Shift from the escalation budget tracker; only a negative shift has an effect."""
    sampled: np.ndarray | None = None
    """Per-row booleans from the shadow sampler; None means no row is sampled."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold_shift):
            raise ValueError(f"threshold shift must be finite, got {self.threshold_shift}")
        if self.cloud_rtt_s is not None and math.isnan(self.cloud_rtt_s):
            raise ValueError("cloud round trip must be a number, got NaN")
        if self.sampled is not None:
            object.__setattr__(self, "sampled", np.asarray(self.sampled, dtype=bool))


_DEFAULT_CONTEXT = RequestContext()
_DEFAULT_SIGNALS = Signals()


def decide(
    policy: Policy,
    confidence: np.ndarray,
    predicted: np.ndarray,
    ctx: RequestContext = _DEFAULT_CONTEXT,
    signals: Signals = _DEFAULT_SIGNALS,
) -> tuple[Decision, ...]:
    """Route each row; returns one :class:`Decision` per row (see the module rules).

    ``confidence`` and ``predicted`` are the ``[N]`` arrays from
    :func:`router.scores.score_rows`. A NaN confidence counts as below any
    threshold, so the row escalates.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    classes = np.asarray(predicted)
    if conf.ndim != 1:
        raise ValueError(f"confidence must be one-dimensional, got shape {conf.shape}")
    if classes.shape != conf.shape:
        raise ValueError(
            f"predicted has shape {classes.shape} but confidence has shape {conf.shape}"
        )
    n = conf.shape[0]
    if signals.sampled is None:
        sampled = (False,) * n
    else:
        if signals.sampled.shape != (n,):
            raise ValueError(
                f"sampled has shape {signals.sampled.shape} but there are {n} rows"
            )
        sampled = signals.sampled.tolist()

    # A per-row loop over Python floats: requests are a handful of rows, and
    # for those it is several times cheaper than vectorised numpy calls.
    scores = conf.tolist()
    if ctx.threshold_override is not None:
        bases = [float(ctx.threshold_override)] * n
        shift = 0.0
    else:
        per_class = policy.class_thresholds
        if per_class:
            default = policy.threshold
            bases = [per_class.get(c, default) for c in classes.tolist()]
        else:
            bases = [policy.threshold] * n
        shift = min(signals.threshold_shift, 0.0)

    if ctx.route is RouteOverride.EDGE or ctx.route is RouteOverride.CLOUD:
        side = Route.EDGE if ctx.route is RouteOverride.EDGE else Route.CLOUD
        return tuple(
            Decision(side, Reason.FORCED, score, _clip01(base + shift))
            for score, base in zip(scores, bases, strict=True)
        )

    time_left = (
        ctx.time_left_s
        if ctx.time_left_s is not None
        else policy.latency.default_budget_ms / 1000.0
    )
    fits = signals.cloud_rtt_s is None or signals.cloud_rtt_s <= time_left
    available = signals.cloud_available
    cloud_ok = available and fits
    if n >= _VECTOR_ROWS:
        return _decide_many(conf, np.asarray(bases, dtype=np.float64), shift,
                            np.asarray(sampled, dtype=bool), available, fits)
    out = []
    for score, base, pick in zip(scores, bases, sampled, strict=True):
        effective = _clip01(base + shift)
        if score >= base:  # False for NaN
            if pick and cloud_ok:
                out.append(Decision(Route.CLOUD, Reason.SAMPLED, score, effective))
            else:
                out.append(Decision(Route.EDGE, Reason.CONFIDENT, score, effective))
        elif not available:
            out.append(Decision(Route.EDGE, Reason.CLOUD_UNAVAILABLE, score, effective))
        elif not fits:
            out.append(Decision(Route.EDGE, Reason.NO_TIME, score, effective))
        elif score >= effective:
            out.append(Decision(Route.EDGE, Reason.BUDGET_EXHAUSTED, score, effective))
        else:
            out.append(Decision(Route.CLOUD, Reason.LOW_CONFIDENCE, score, effective))
    return tuple(out)


_VECTOR_ROWS = 16
"""From this many rows on, decisions are computed with array operations."""
_REASONS = (Reason.SAMPLED, Reason.CONFIDENT, Reason.CLOUD_UNAVAILABLE, Reason.NO_TIME,
            Reason.BUDGET_EXHAUSTED, Reason.LOW_CONFIDENCE)
_ROUTE_OF = (Route.CLOUD, Route.EDGE, Route.EDGE, Route.EDGE, Route.EDGE, Route.CLOUD)


def _decide_many(conf: np.ndarray, bases: np.ndarray, shift: float, sampled: np.ndarray,
                 available: bool, fits: bool) -> tuple[Decision, ...]:
    """The same rules as the per-row loop, for many rows at once."""
    effective = np.clip(bases + shift, 0.0, 1.0)
    confident = conf >= bases  # False for NaN
    code = np.full(conf.shape[0], 5, dtype=np.int64)  # low_confidence
    below = ~confident
    if not available:
        code[below] = 2
    elif not fits:
        code[below] = 3
    else:
        code[below & (conf >= effective)] = 4
    code[confident] = 1
    if available and fits:
        code[confident & sampled] = 0
    reasons = [_REASONS[c] for c in code.tolist()]
    routes = [_ROUTE_OF[c] for c in code.tolist()]
    return tuple(map(Decision, routes, reasons, conf.tolist(), effective.tolist()))


def _clip01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def escalate_mask(decisions: Sequence[Decision]) -> np.ndarray:
    """Boolean ``[N]``: which rows the decisions send to the cloud."""
    return np.fromiter(
        (d.route is Route.CLOUD for d in decisions), dtype=bool, count=len(decisions)
    )


def route_rows(
    policy: Policy,
    class_scores: np.ndarray,
    ctx: RequestContext = _DEFAULT_CONTEXT,
    signals: Signals = _DEFAULT_SIGNALS,
) -> tuple[Decision, ...]:
    """Score the rows and decide them in one call (:func:`score_rows` then :func:`decide`)."""
    confidence, predicted = score_rows(policy, class_scores)
    return decide(policy, confidence, predicted, ctx, signals)
