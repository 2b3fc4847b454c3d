"""The router at run time: one plan per request, and the outcome taken back.

:class:`Router` owns the whole per-request decision for one policy. Per
request the caller does::

    plan = router.plan(confidence, predicted, ctx)   # sampling, breaker permit, budget, time
    ... carry the plan out: escalate plan.cloud_rows, shadow plan.shadow_rows ...
    routing = router.record(plan, escalation)        # RTT, breaker, budget, drift

and answers each row as ``routing`` says. A plan made for a request that asked
for a fast answer then a better one escalates its rows behind the answer
(``plan.later_rows``): ``record`` answers them at the edge, and their outcome
comes back later with ``router.record_later(plan, routing, escalation)``.
Everything here is pure apart from
the injected clock and random generator, so the per-request behaviour is
tested without servers or sleeps.

None of this locks; an asyncio caller uses a router from one event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from edgecloud.router.decide import (
    REASON_CODE,
    REASONS,
    ROUTES,
    Plan,
    Reason,
    RequestContext,
    Route,
    RouteOverride,
    plan_rows,
)
from edgecloud.router.drift import DriftMonitor
from edgecloud.router.policy import Policy
from edgecloud.router.signals import (
    BreakerState,
    CircuitBreaker,
    EscalationBudget,
    RttEstimator,
    ShadowSampler,
)

__all__ = ["Escalation", "Router", "Routing"]

Clock = Callable[[], float]

_LOW = REASON_CODE[Reason.LOW_CONFIDENCE]
_FAILED = REASON_CODE[Reason.CLOUD_FAILED]
_EDGE_CODE = ROUTES.index(Route.EDGE)
_CLOUD_CODE = ROUTES.index(Route.CLOUD)
_FALLBACK_CODE = ROUTES.index(Route.EDGE_FALLBACK)
_ROUTE_OF_SIDE = np.array([_EDGE_CODE, _CLOUD_CODE, _EDGE_CODE, _EDGE_CODE], dtype=np.uint8)
"""Without an escalation outcome: edge → edge, cloud → cloud, shadow and later → edge."""
_ROUTE_OF_ONE_SIDE = tuple(_ROUTE_OF_SIDE.tolist())


FIRST_PROBE_AFTER_S = 0.25
"""How soon an open breaker first probes the cloud; later probes back off up to the
policy's ``breaker.half_open_after_s`` (see :class:`router.signals.CircuitBreaker`)."""


class Escalation(NamedTuple):
    """What became of a plan's escalation."""

    ok: bool
    """The cloud answered every escalated row."""
    rtt_s: float | None = None
    """The round trip, when the cloud answered."""


class Routing(NamedTuple):
    """How each row of a request was finally answered: per-row arrays."""

    route: np.ndarray
    """``uint8 [N]``: a route code per row (``ROUTES[code]``)."""
    reason: np.ndarray
    """``uint8 [N]``: a reason code per row (``REASONS[code]``)."""
    confidence: np.ndarray
    """``float64 [N]``: each row's edge confidence."""

    @property
    def rows(self) -> int:
        """Rows in the request."""
        return int(self.route.shape[0])

    def routes(self) -> list[Route]:
        """The route of each row, as enum members."""
        return [ROUTES[code] for code in self.route.tolist()]

    def reasons(self) -> list[Reason]:
        """The reason of each row, as enum members."""
        return [REASONS[code] for code in self.reason.tolist()]


_ONE_ROUTE = tuple(np.array([code], dtype=np.uint8) for code in range(len(ROUTES)))
for _array in _ONE_ROUTE:
    _array.flags.writeable = False


class Router:
    """Routing for one policy: the rules of :func:`decide` plus the run-time signals.

    The signals (:mod:`router.signals`) are built from the policy's sections
    and kept here: the round-trip estimate, the escalation budget, the
    circuit breaker, the shadow sampler, and the drift monitor against the
    policy's calibration histogram (when it has one).
    """

    def __init__(self, policy: Policy, *, clock: Clock, rng: np.random.Generator,
                 cloud: bool = True, first_probe_after_s: float = FIRST_PROBE_AFTER_S) -> None:
        self.policy = policy
        """The policy the rules and signals come from."""
        self.cloud = cloud
        """False when there is no cloud to escalate to: every row is answered at the edge."""
        self.rtt = RttEstimator(policy.latency.rtt_quantile, policy.latency.rtt_window)
        """Cloud round-trip estimate."""
        self.budget = EscalationBudget(
            policy.budget.target_rate,
            step=policy.budget.step,
            max_shift=policy.budget.max_shift,
            window=policy.budget.window,
        )
        """Escalation-rate budget."""
        self.breaker = CircuitBreaker(
            policy.breaker.failures_to_open, policy.breaker.half_open_after_s, clock,
            first_probe_after_s=first_probe_after_s, rng=rng,
        )
        """Circuit breaker on the escalation path."""
        self.sampler = ShadowSampler(policy.shadow_rate, rng)
        """Shadow sampler."""
        self.drift = (
            DriftMonitor(policy.calibration_histogram)
            if policy.calibration_histogram is not None
            else None
        )
        """Drift of the observed confidences against the calibration histogram, if any."""

    def cloud_reconnected(self) -> None:
        """The connection to the cloud is up again after it was down: probe it now.

        An open breaker lets the next escalation through as its probe instead
        of waiting out its backoff, so escalations resume as soon as the
        gateway is back.
        """
        self.breaker.reconnected()

    def plan(self, confidence: np.ndarray, predicted: np.ndarray,
             ctx: RequestContext) -> Plan:
        """Plan one request (:func:`decide` with this router's signals).

        ``confidence`` and ``predicted`` are :func:`router.scores.score_rows`'s
        arrays. Takes the breaker's permit when the plan escalates rows.
        """
        n = confidence.shape[0]
        if confidence.ndim != 1 or predicted.shape != confidence.shape:
            raise ValueError(f"confidence {confidence.shape} and predicted {predicted.shape} "
                             "must both have one entry per row")
        if confidence.dtype != np.float64:
            confidence = confidence.astype(np.float64)
        sampler = self.sampler
        sampled = (sampler.sample(n)
                   if ctx.route is RouteOverride.AUTO and sampler.rate > 0.0 else None)
        breaker = self.breaker
        available = self.cloud and (breaker.state is BreakerState.CLOSED or breaker.available())
        plan = plan_rows(self.policy, confidence, predicted, ctx, available,
                         self.rtt.estimate(), self.budget.shift, sampled)
        if plan.permit and breaker.state is not BreakerState.CLOSED:
            # available() said yes and nothing ran since, so this takes the probe slot.
            breaker.allow()
        return plan

    def record(self, plan: Plan, escalation: Escalation | None = None) -> Routing:
        """Take a plan's outcome back; returns how each row was finally answered.

        ``escalation`` is None when the plan escalated nothing now (rows escalated
        behind the answer are answered at the edge here; :meth:`record_later`
        takes their outcome). A failed
        escalation answers its rows at the edge (``edge_fallback``,
        ``cloud_failed``) and counts against the breaker; a successful one
        feeds the round-trip estimate and closes a half-open breaker. The
        budget tracker sees every row the threshold decided (a failed
        escalation still counts as escalated; forced and sampled rows do not),
        and the drift monitor sees every confidence.
        """
        one = plan.side.shape[0] == 1
        if one:
            route = _ONE_ROUTE[_ROUTE_OF_ONE_SIDE[plan.side[0]]]
        else:
            route = _ROUTE_OF_SIDE[plan.side]
        reason = plan.reason
        if plan.permit and not plan.later_rows.size:
            if escalation is None:
                raise ValueError("a plan that escalates rows needs its escalation outcome")
            if escalation.ok:
                self.breaker.record_success()
                if escalation.rtt_s is not None:
                    self.rtt.observe(escalation.rtt_s)
            else:
                self.breaker.record_failure()
                route = route.copy()
                reason = reason.copy()
                route[plan.cloud_rows] = _FALLBACK_CODE
                reason[plan.cloud_rows] = _FAILED
        if not plan.forced:  # forced rows say nothing about the threshold
            if one:
                self.budget.observe_one(plan.reason[0] == _LOW)
            else:
                self.budget.observe(plan.reason == _LOW)
        if self.drift is not None:
            self.drift.observe(plan.confidence)
        return Routing(route, reason, plan.confidence)

    def record_later(self, plan: Plan, routing: Routing, escalation: Escalation) -> Routing:
        """Take back the outcome of the rows a plan escalated behind the answer.

        ``routing`` is what :meth:`record` returned for the plan. Returns how
        each row is answered now: the later rows by the cloud (route ``cloud``),
        or, when the escalation failed, still at the edge (``edge_fallback``,
        ``cloud_failed``). The breaker and the round-trip estimate see the
        outcome; the budget saw the rows when the plan was recorded.
        """
        rows = plan.later_rows
        if not rows.size:
            raise ValueError("the plan escalated no rows behind its answer")
        route = routing.route.copy()
        reason = routing.reason
        if escalation.ok:
            self.breaker.record_success()
            if escalation.rtt_s is not None:
                self.rtt.observe(escalation.rtt_s)
            route[rows] = _CLOUD_CODE
        else:
            self.breaker.record_failure()
            route[rows] = _FALLBACK_CODE
            reason = reason.copy()
            reason[rows] = _FAILED
        return Routing(route, reason, routing.confidence)

