"""The routing rules: which rows the edge answers, which go to the cloud, and why.

:func:`decide` is a pure function of the policy, the rows' confidences, the
request's context and the run-time signals. It returns one :class:`Plan` per
request: per-row arrays of sides and reasons, never one object per row.
Falling back is a decision with a reason, never a side effect.
:class:`router.runtime.Router` wraps it with the run-time state (breaker,
budget, round trips, sampling, drift) and takes the outcome back.

Rules, per row, first match wins:

1. ``route=edge`` in the request → edge, ``forced``. ``route=cloud`` → cloud,
   ``forced``, unless the breaker gives no permit → edge, ``cloud_unavailable``.
2. Confidence at or above the base threshold (the request's override, else
   the policy's per-class or global threshold) → edge, ``confident``, unless
   the shadow sampler picked the row and the cloud is available with time to
   spare → shadow, ``sampled`` (answered at the edge at once, the cloud's
   answer recorded when it arrives).
3. Below the base threshold:
   cloud unavailable (no breaker permit) → edge, ``cloud_unavailable``;
   expected round trip longer than the time left → edge, ``no_time``;
   at or above the budget-lowered threshold → edge, ``budget_exhausted``;
   otherwise → cloud, ``low_confidence``.

A request may ask for a fast answer then a better one (``better``, the app's
``answer=fast_then_better``): the rules stay the same, but a row they send to
the cloud goes to side LATER instead (answered at the edge at once, escalated
behind the answer, the cloud's answer delivered later by id), and the time
left does not hold it back (the deadline is the fast answer's, not the
cloud's). :func:`better_codes` says for each row whether a better answer will
come, and if not, why (``budget_spent``, ``cloud_unavailable``, ``confident``).

The escalation budget may only lower the threshold here: a positive shift
is unused credit in the tracker and never sends extra rows to the cloud, and
a request's own threshold override is never shifted.
"""

from __future__ import annotations

import math
from enum import IntEnum, StrEnum
from typing import NamedTuple

import numpy as np

from edgecloud.router.policy import Policy
from edgecloud.router.scores import score_rows

__all__ = [
    "BETTER",
    "REASONS",
    "ROUTES",
    "Better",
    "Plan",
    "Reason",
    "RequestContext",
    "Route",
    "RouteOverride",
    "Side",
    "Signals",
    "better_codes",
    "decide",
    "plan_rows",
    "route_rows",
]


class Route(StrEnum):
    """Which side answered a row, as the app is told."""

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
    """The row was escalated and the escalation failed (route ``edge_fallback``)."""


ROUTES: tuple[Route, ...] = tuple(Route)
"""Route codes: ``ROUTES[code]`` is the route an array of codes stands for."""
REASONS: tuple[Reason, ...] = tuple(Reason)
"""Reason codes: ``REASONS[code]`` is the reason an array of codes stands for."""
REASON_CODE: dict[Reason, int] = {reason: code for code, reason in enumerate(REASONS)}

_CONFIDENT = REASON_CODE[Reason.CONFIDENT]
_LOW = REASON_CODE[Reason.LOW_CONFIDENCE]
_NO_TIME = REASON_CODE[Reason.NO_TIME]
_BUDGET = REASON_CODE[Reason.BUDGET_EXHAUSTED]
_UNAVAILABLE = REASON_CODE[Reason.CLOUD_UNAVAILABLE]
_SAMPLED = REASON_CODE[Reason.SAMPLED]
_FORCED = REASON_CODE[Reason.FORCED]


class Side(IntEnum):
    """Where the plan sends a row."""

    EDGE = 0
    """Answered by the edge model."""
    CLOUD = 1
    """Escalated: the cloud's answer replaces the edge's (the edge's if the cloud fails)."""
    SHADOW = 2
    """Answered by the edge model; the cloud is asked too, and its answer only recorded."""
    LATER = 3
    """Answered by the edge model now; escalated behind the answer, and the cloud's answer
    delivered later by id (a request that asked for a fast answer then a better one)."""


class Better(StrEnum):
    """For a request that asked for a fast answer then a better one: what comes of each row."""

    PENDING = "pending"
    """The row is escalated behind the answer: the better answer will come."""
    BUDGET_SPENT = "budget_spent"
    """The escalation budget refused the row: no better answer will come."""
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    """The cloud cannot be asked now (breaker open, no gateway): none will come."""
    CONFIDENT = "confident"
    """The edge answer meets the threshold (or the request forced the edge): it stands."""


BETTER: tuple[Better, ...] = tuple(Better)
"""Better codes: ``BETTER[code]`` is what an array of codes stands for."""


class RouteOverride(StrEnum):
    """A request's ``route`` parameter."""

    AUTO = "auto"
    EDGE = "edge"
    CLOUD = "cloud"


class _Context(NamedTuple):
    route: RouteOverride
    threshold_override: float | None
    time_left_s: float | None
    better: bool


class RequestContext(_Context):
    """What the request itself says about routing: an immutable value.

    Fields: ``route`` (force a side, or let the router choose),
    ``threshold_override`` (the request's ``confidence_threshold``, replacing
    the policy's thresholds for it), ``time_left_s`` (seconds left before the
    request's deadline; None means the policy's default budget), ``better``
    (answer at once, and deliver the cloud's answer to the rows the rules
    escalate later: side LATER; it cannot go with ``route=edge``). A named
    tuple checked when made: one is made per request on the hot path.
    """

    __slots__ = ()

    def __new__(cls, route: RouteOverride | str = RouteOverride.AUTO,
                threshold_override: float | None = None,
                time_left_s: float | None = None, better: bool = False) -> RequestContext:
        if route.__class__ is not RouteOverride:
            route = RouteOverride(route)
        if threshold_override is not None and not 0.0 <= threshold_override <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1], got {threshold_override}")
        if time_left_s is not None and time_left_s != time_left_s:
            raise ValueError("time left must be a number, got NaN")
        if better and route is RouteOverride.EDGE:
            raise ValueError("a request forced to the edge cannot ask for a better answer")
        return tuple.__new__(cls, (route, threshold_override, time_left_s, better))


class Signals(NamedTuple):
    """Run-time signals the rules take into account (see :mod:`router.signals`)."""

    cloud_available: bool = True
    """Whether the breaker gives a permit to escalate (false while it is open)."""
    cloud_rtt_s: float | None = None
    """Expected cloud round trip in seconds; None (unknown) is taken to fit any budget."""
    threshold_shift: float = 0.0
    """Shift from the escalation budget tracker; only a negative shift has an effect."""
    sampled: np.ndarray | None = None
    """Per-row booleans from the shadow sampler; None means no row is sampled."""


_EMPTY_ROWS_DEFAULT = np.zeros(0, dtype=np.int64)
_EMPTY_ROWS_DEFAULT.flags.writeable = False


class Plan(NamedTuple):
    """Where each row of one request goes, and why: per-row arrays.

    A named tuple of arrays rather than an object per row: one plan is made
    per request on the hot path. Treat the arrays as read-only.
    """

    side: np.ndarray
    """``uint8 [N]``: a :class:`Side` per row."""
    reason: np.ndarray
    """``uint8 [N]``: a reason code per row (``REASONS[code]``)."""
    confidence: np.ndarray
    """``float64 [N]``: each row's confidence."""
    threshold: np.ndarray
    """``float64 [N]``: the threshold each confidence was held against (after any shift)."""
    cloud_rows: np.ndarray
    """``int64``: indices of the rows with side CLOUD."""
    shadow_rows: np.ndarray
    """``int64``: indices of the rows with side SHADOW."""
    permit: bool
    """True when the plan escalates rows (now or later), which then go out under the
    breaker's permit."""
    forced: bool
    """True when the request forced a side (its rows say nothing about the threshold)."""
    later_rows: np.ndarray = _EMPTY_ROWS_DEFAULT
    """``int64``: indices of the rows with side LATER (escalated behind the answer)."""

    @property
    def rows(self) -> int:
        """Rows in the request."""
        return int(self.side.shape[0])

    def reasons(self) -> list[Reason]:
        """The reason of each row, as enum members."""
        return [REASONS[code] for code in self.reason.tolist()]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


_EMPTY_ROWS = _EMPTY_ROWS_DEFAULT
_EDGE_SIDE, _CLOUD_SIDE, _SHADOW_SIDE = int(Side.EDGE), int(Side.CLOUD), int(Side.SHADOW)
_LATER_SIDE = int(Side.LATER)
"""Plain ints for array operations (numpy inspects enum members slowly)."""
_ROW_ZERO = _frozen(np.zeros(1, dtype=np.int64))
_ONE_SIDE = tuple(_frozen(np.array([side], dtype=np.uint8)) for side in Side)
_ONE_REASON = tuple(_frozen(np.array([code], dtype=np.uint8)) for code in range(len(REASONS)))
_ONE_THRESHOLD: dict[float, np.ndarray] = {}
"""One-row threshold arrays by value: a request usually meets one of a few thresholds."""
_SIDE_OF_CODE = np.zeros(len(REASONS), dtype=np.uint8)
_SIDE_OF_CODE[_LOW] = _CLOUD_SIDE
_SIDE_OF_CODE[_SAMPLED] = _SHADOW_SIDE


def decide(
    policy: Policy,
    confidence: np.ndarray,
    predicted: np.ndarray,
    ctx: RequestContext | None = None,
    signals: Signals | None = None,
) -> Plan:
    """Plan every row of one request (see the module rules).

    ``confidence`` and ``predicted`` are the ``[N]`` arrays from
    :func:`router.scores.score_rows`. A NaN confidence counts as below any
    threshold, so the row escalates.
    """
    ctx = ctx or _DEFAULT_CONTEXT
    signals = signals or _DEFAULT_SIGNALS
    conf = np.asarray(confidence, dtype=np.float64)
    classes = np.asarray(predicted)
    if conf.ndim != 1:
        raise ValueError(f"confidence must be one-dimensional, got shape {conf.shape}")
    if classes.shape != conf.shape:
        raise ValueError(
            f"predicted has shape {classes.shape} but confidence has shape {conf.shape}"
        )
    n = conf.shape[0]
    sampled = signals.sampled
    if sampled is not None:
        sampled = np.asarray(sampled, dtype=bool)
        if sampled.shape != (n,):
            raise ValueError(f"sampled has shape {sampled.shape} but there are {n} rows")
    if not math.isfinite(signals.threshold_shift):
        raise ValueError(f"threshold shift must be finite, got {signals.threshold_shift}")
    return plan_rows(policy, conf, classes, ctx, bool(signals.cloud_available),
                     signals.cloud_rtt_s, float(signals.threshold_shift), sampled)


def plan_rows(policy: Policy, conf: np.ndarray, classes: np.ndarray, ctx: RequestContext,
              available: bool, rtt_s: float | None, shift: float,
              sampled: np.ndarray | None) -> Plan:
    """:func:`decide` for arguments already checked (the run-time router's hot path).

    ``conf`` is float64 ``[N]``, ``classes`` ``[N]``, ``sampled`` bool ``[N]`` or None,
    ``shift`` finite.
    """
    n = conf.shape[0]
    time_left = (
        ctx.time_left_s
        if ctx.time_left_s is not None
        else policy.latency.default_budget_ms / 1000.0
    )
    # A better answer comes behind the fast one: the request's deadline does not hold it back.
    better = ctx.better
    fits = better or rtt_s is None or rtt_s <= time_left
    shift = 0.0 if ctx.threshold_override is not None or shift > 0.0 else shift
    if n == 1:
        plan = _decide_one(policy, conf, classes, ctx, shift, sampled, available, fits)
        return _deferred(plan) if better and plan.permit else plan
    bases = _bases(policy, classes, ctx, n)
    if shift:  # only ever negative, and the bases are within [0, 1]
        effective = bases + shift
        np.maximum(effective, 0.0, out=effective)
    else:
        effective = bases
    if ctx.route is RouteOverride.EDGE or ctx.route is RouteOverride.CLOUD:
        to_cloud = ctx.route is RouteOverride.CLOUD and available
        code = _FORCED if ctx.route is RouteOverride.EDGE or available else _UNAVAILABLE
        side = np.full(n, _CLOUD_SIDE if to_cloud else _EDGE_SIDE, dtype=np.uint8)
        reason = np.full(n, code, dtype=np.uint8)
        cloud_rows = np.arange(n, dtype=np.int64) if to_cloud and n else _EMPTY_ROWS
        plan = Plan(side, reason, conf, effective, cloud_rows, _EMPTY_ROWS,
                    bool(cloud_rows.size), True)
        return _deferred(plan) if better and plan.permit else plan
    confident = conf >= bases  # False for NaN
    reason = np.full(n, _LOW, dtype=np.uint8)
    below = ~confident
    if not available:
        reason[below] = _UNAVAILABLE
    elif not fits:
        reason[below] = _NO_TIME
    else:
        reason[below & (conf >= effective)] = _BUDGET
    reason[confident] = _CONFIDENT
    if available and fits and sampled is not None:
        reason[confident & sampled] = _SAMPLED
    side = _SIDE_OF_CODE[reason]
    cloud_rows = np.flatnonzero(side == _CLOUD_SIDE)
    shadow_rows = (np.flatnonzero(side == _SHADOW_SIDE) if sampled is not None
                   else _EMPTY_ROWS)
    plan = Plan(side, reason, conf, effective, cloud_rows, shadow_rows,
                bool(cloud_rows.size), False)
    return _deferred(plan) if better and plan.permit else plan


def _deferred(plan: Plan) -> Plan:
    """The plan with its cloud rows escalated behind the answer (side LATER) instead."""
    side = plan.side.copy()
    side[plan.cloud_rows] = _LATER_SIDE
    return plan._replace(side=side, cloud_rows=_EMPTY_ROWS, later_rows=plan.cloud_rows)


_BETTER_OF_REASON = np.full(len(REASONS), BETTER.index(Better.CONFIDENT), dtype=np.uint8)
_BETTER_OF_REASON[_BUDGET] = BETTER.index(Better.BUDGET_SPENT)
_BETTER_OF_REASON[_UNAVAILABLE] = BETTER.index(Better.CLOUD_UNAVAILABLE)
_BETTER_PENDING = BETTER.index(Better.PENDING)


def better_codes(plan: Plan) -> np.ndarray:
    """``uint8 [N]``: for each row of a plan made with ``better``, a code of :data:`BETTER`:
    pending for the rows escalated behind the answer, else why no better answer comes."""
    codes = _BETTER_OF_REASON[plan.reason]
    if plan.later_rows.size:
        codes[plan.later_rows] = _BETTER_PENDING
    return codes


def _bases(policy: Policy, classes: np.ndarray, ctx: RequestContext, n: int) -> np.ndarray:
    """The base threshold of each row: the request's, a per-class one, or the global one."""
    if ctx.threshold_override is not None:
        return np.full(n, float(ctx.threshold_override))
    per_class = policy.class_thresholds
    if not per_class:
        return np.full(n, float(policy.threshold))
    default = policy.threshold
    return np.fromiter((per_class.get(c, default) for c in classes.tolist()),
                       dtype=np.float64, count=n)


def _decide_one(policy: Policy, conf: np.ndarray, classes: np.ndarray, ctx: RequestContext,
                shift: float, sampled: np.ndarray | None, available: bool,
                fits: bool) -> Plan:
    """The same rules for a one-row request, in plain Python (several times cheaper)."""
    score = float(conf[0])
    if ctx.threshold_override is not None:
        base = float(ctx.threshold_override)
    elif policy.class_thresholds:
        base = policy.class_thresholds.get(int(classes[0]), policy.threshold)
    else:
        base = policy.threshold
    effective = base + shift
    effective = 0.0 if effective < 0.0 else 1.0 if effective > 1.0 else effective
    forced = ctx.route is not RouteOverride.AUTO
    if forced:
        if ctx.route is RouteOverride.EDGE:
            side, code = Side.EDGE, _FORCED
        elif available:
            side, code = Side.CLOUD, _FORCED
        else:
            side, code = Side.EDGE, _UNAVAILABLE
    elif score >= base:  # False for NaN
        if sampled is not None and sampled[0] and available and fits:
            side, code = Side.SHADOW, _SAMPLED
        else:
            side, code = Side.EDGE, _CONFIDENT
    elif not available:
        side, code = Side.EDGE, _UNAVAILABLE
    elif not fits:
        side, code = Side.EDGE, _NO_TIME
    elif score >= effective:
        side, code = Side.EDGE, _BUDGET
    else:
        side, code = Side.CLOUD, _LOW
    cloud = side is Side.CLOUD
    threshold = _ONE_THRESHOLD.get(effective)
    if threshold is None:
        if len(_ONE_THRESHOLD) >= 1024:
            _ONE_THRESHOLD.clear()
        threshold = _ONE_THRESHOLD[effective] = _frozen(np.array([effective]))
    return Plan(
        _ONE_SIDE[side], _ONE_REASON[code], conf, threshold,
        _ROW_ZERO if cloud else _EMPTY_ROWS,
        _ROW_ZERO if side is Side.SHADOW else _EMPTY_ROWS,
        cloud, forced,
    )


_DEFAULT_CONTEXT = RequestContext()
_DEFAULT_SIGNALS = Signals()


def route_rows(
    policy: Policy,
    class_scores: np.ndarray,
    ctx: RequestContext | None = None,
    signals: Signals | None = None,
) -> Plan:
    """Score the rows and plan them in one call (:func:`score_rows` then :func:`decide`)."""
    confidence, predicted = score_rows(policy, class_scores)
    return decide(policy, confidence, predicted, ctx, signals)
