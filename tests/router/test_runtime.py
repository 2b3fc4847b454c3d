"""Tests for the router at run time: one plan per request, the outcome taken back.

The whole per-request behaviour (sampling, breaker, budget, deadline,
fallbacks) runs here as pure code with an injected clock and random source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from fake_clock import FakeClock

from edgecloud.router import calibration_histogram
from edgecloud.router.decide import REASONS, ROUTES, Reason, RequestContext, Route, RouteOverride
from edgecloud.router.policy import BreakerPolicy, BudgetPolicy, LatencyPolicy, Policy
from edgecloud.router.runtime import FIRST_PROBE_AFTER_S, Escalation, Router
from edgecloud.router.signals import BreakerState

POLICY = Policy(
    name="t",
    threshold=0.5,
    latency=LatencyPolicy(default_budget_ms=250.0),
    breaker=BreakerPolicy(failures_to_open=2, half_open_after_s=5.0),
)
CONFIDENT, LOW = 0.9, 0.2
AUTO = RequestContext()
OK = Escalation(ok=True, rtt_s=0.01)
FAILED = Escalation(ok=False)


def _router(policy: Policy = POLICY, *, clock: FakeClock | None = None, seed: int = 0,
            cloud: bool = True) -> Router:
    return Router(policy, clock=clock or FakeClock(), rng=np.random.default_rng(seed),
                  cloud=cloud)


def _request(router: Router, confidence: float, ctx: RequestContext = AUTO,
             escalation: Escalation | None = OK) -> tuple[Route, Reason]:
    """One one-row request through plan → (escalation if planned) → record."""
    plan = router.plan(np.array([confidence]), np.array([0]), ctx)
    routing = router.record(plan, escalation if plan.permit else None)
    return ROUTES[routing.route[0]], REASONS[routing.reason[0]]


def _fail_twice(router: Router, clock: FakeClock) -> None:
    _request(router, LOW, escalation=FAILED)
    _request(router, LOW, escalation=FAILED)


def _open_then_wait(router: Router, clock: FakeClock) -> None:
    _fail_twice(router, clock)
    clock.advance(5.0)


def _slow_cloud(router: Router, clock: FakeClock) -> None:
    for _ in range(5):
        _request(router, LOW, escalation=Escalation(ok=True, rtt_s=0.4))


def _nothing(router: Router, clock: FakeClock) -> None:
    return None


@dataclass(frozen=True)
class Case:
    """Set the router up, send one request, expect a route and a reason."""

    setup: Callable[[Router, FakeClock], None]
    confidence: float
    expect: tuple[Route, Reason]
    ctx: RequestContext = field(default_factory=RequestContext)
    escalation: Escalation | None = OK
    policy: Policy = POLICY
    cloud: bool = True


E, C, F = Route.EDGE, Route.CLOUD, Route.EDGE_FALLBACK
R = Reason

# fmt: off
CASES = {
    "confident": Case(_nothing, CONFIDENT, (E, R.CONFIDENT)),
    "low-escalated": Case(_nothing, LOW, (C, R.LOW_CONFIDENCE)),
    "low-cloud-fails": Case(_nothing, LOW, (F, R.CLOUD_FAILED), escalation=FAILED),
    "breaker-open": Case(_fail_twice, LOW, (E, R.CLOUD_UNAVAILABLE)),
    "breaker-open-confident-row": Case(_fail_twice, CONFIDENT, (E, R.CONFIDENT)),
    "half-open-probe": Case(_open_then_wait, LOW, (C, R.LOW_CONFIDENCE)),
    "no-time-after-slow-round-trips": Case(_slow_cloud, LOW, (E, R.NO_TIME)),
    "long-deadline-fits": Case(_slow_cloud, LOW, (C, R.LOW_CONFIDENCE),
                               ctx=RequestContext(time_left_s=1.0)),
    "forced-edge": Case(_nothing, LOW, (E, R.FORCED),
                        ctx=RequestContext(route=RouteOverride.EDGE)),
    "forced-cloud": Case(_nothing, CONFIDENT, (C, R.FORCED),
                         ctx=RequestContext(route=RouteOverride.CLOUD)),
    "forced-cloud-fails": Case(_nothing, CONFIDENT, (F, R.CLOUD_FAILED),
                               ctx=RequestContext(route=RouteOverride.CLOUD),
                               escalation=FAILED),
    "forced-cloud-breaker-open": Case(_fail_twice, CONFIDENT, (E, R.CLOUD_UNAVAILABLE),
                                      ctx=RequestContext(route=RouteOverride.CLOUD)),
    "request-threshold": Case(_nothing, 0.4, (E, R.CONFIDENT),
                              ctx=RequestContext(threshold_override=0.3)),
    "sampled-answered-at-edge": Case(
        _nothing, CONFIDENT, (E, R.SAMPLED),
        policy=POLICY.model_copy(update={"shadow_rate": 1.0})),
    "sampled-not-while-open": Case(
        _fail_twice, CONFIDENT, (E, R.CONFIDENT),
        policy=POLICY.model_copy(update={"shadow_rate": 1.0})),
    "no-cloud-configured": Case(_nothing, LOW, (E, R.CLOUD_UNAVAILABLE), cloud=False),
    "no-cloud-forced": Case(_nothing, LOW, (E, R.CLOUD_UNAVAILABLE), cloud=False,
                            ctx=RequestContext(route=RouteOverride.CLOUD)),
}
# fmt: on


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_request_table(case: Case) -> None:
    """Each entry pins how one request is answered after a given history."""
    clock = FakeClock()
    router = _router(case.policy, clock=clock, cloud=case.cloud)
    case.setup(router, clock)
    assert _request(router, case.confidence, case.ctx, case.escalation) == case.expect


def test_plan_takes_the_half_open_probe_and_blocks_a_second() -> None:
    """After the wait, the first escalating plan takes the single probe; the next request
    is answered at the edge until the probe's outcome is recorded."""
    clock = FakeClock()
    router = _router(clock=clock)
    _open_then_wait(router, clock)
    probe = router.plan(np.array([LOW]), np.array([0]), RequestContext())
    assert probe.permit
    assert router.breaker.state is BreakerState.HALF_OPEN
    assert _request(router, LOW) == (E, R.CLOUD_UNAVAILABLE)
    router.record(probe, OK)
    assert router.breaker.state is BreakerState.CLOSED
    assert _request(router, LOW) == (C, R.LOW_CONFIDENCE)


def test_failed_probe_reopens_the_breaker() -> None:
    """A failed probe opens the breaker again, for twice the first wait (jittered)."""
    clock = FakeClock()
    router = _router(clock=clock)
    _open_then_wait(router, clock)
    assert _request(router, LOW, escalation=FAILED) == (F, R.CLOUD_FAILED)
    assert router.breaker.state is BreakerState.OPEN
    assert _request(router, LOW) == (E, R.CLOUD_UNAVAILABLE)
    wait = router.breaker.probe_at - clock()
    assert FIRST_PROBE_AFTER_S <= wait <= 2 * FIRST_PROBE_AFTER_S
    clock.advance(wait)
    assert _request(router, LOW) == (C, R.LOW_CONFIDENCE)


def test_open_breaker_probes_soon() -> None:
    """An open breaker first probes within FIRST_PROBE_AFTER_S, not after the policy's
    longest wait (half_open_after_s)."""
    clock = FakeClock()
    router = _router(clock=clock)
    _fail_twice(router, clock)
    assert _request(router, LOW) == (E, R.CLOUD_UNAVAILABLE)
    clock.advance(FIRST_PROBE_AFTER_S)
    assert _request(router, LOW) == (C, R.LOW_CONFIDENCE)


def test_reconnection_lets_an_open_breaker_probe_at_once() -> None:
    """Told that the cloud connection is back, an open breaker sends the next escalation
    as its probe without waiting; told again while the probe is out, it sends no second."""
    clock = FakeClock()
    policy = POLICY.model_copy(update={"breaker": BreakerPolicy(failures_to_open=2,
                                                                 half_open_after_s=3600.0)})
    router = _router(policy, clock=clock)
    _fail_twice(router, clock)
    for _ in range(5):  # failed probes push the wait toward the hour
        clock.advance(router.breaker.probe_at - clock())
        assert _request(router, LOW, escalation=FAILED) == (F, R.CLOUD_FAILED)
    assert _request(router, LOW) == (E, R.CLOUD_UNAVAILABLE)
    router.cloud_reconnected()
    probe = router.plan(np.array([LOW]), np.array([0]), RequestContext())
    assert probe.permit
    router.cloud_reconnected()
    assert _request(router, LOW) == (E, R.CLOUD_UNAVAILABLE)
    router.record(probe, OK)
    assert _request(router, LOW) == (C, R.LOW_CONFIDENCE)


def test_breaker_opening_between_plan_and_escalation() -> None:
    """A plan that took its permit is carried out even if the breaker opens meanwhile:
    its late success answers its rows from the cloud but does not close the breaker."""
    clock = FakeClock()
    router = _router(clock=clock)
    early = router.plan(np.array([LOW, CONFIDENT]), np.array([0, 0]), RequestContext())
    assert early.permit and early.cloud_rows.tolist() == [0]
    _fail_twice(router, clock)
    assert router.breaker.state is BreakerState.OPEN
    routing = router.record(early, OK)
    assert routing.routes() == [C, E]
    assert router.breaker.state is BreakerState.OPEN
    # A late failure does not push the next probe further out either.
    clock.advance(3.0)
    late = router.plan(np.array([CONFIDENT]), np.array([0]),
                       RequestContext(route=RouteOverride.EDGE))
    router.record(late)
    clock.advance(2.0)
    assert _request(router, LOW) == (C, R.LOW_CONFIDENCE)


def test_escalating_plan_needs_its_outcome() -> None:
    """Recording a plan that escalated rows without the escalation's outcome is refused."""
    router = _router()
    plan = router.plan(np.array([LOW]), np.array([0]), RequestContext())
    with pytest.raises(ValueError, match="outcome"):
        router.record(plan)


def test_round_trips_feed_the_estimate_only_on_success() -> None:
    """Successful escalations feed the round-trip estimate; failures do not."""
    router = _router()
    _request(router, LOW, escalation=Escalation(ok=True, rtt_s=0.03))
    _request(router, LOW, escalation=FAILED)
    assert router.rtt.count == 1
    assert router.rtt.estimate() == pytest.approx(0.03)


def test_budget_counts_only_threshold_escalations() -> None:
    """Forced and sampled rows are not counted; a failed escalation still counts."""
    policy = POLICY.model_copy(update={
        "budget": BudgetPolicy(target_rate=0.5, window=10), "shadow_rate": 1.0})
    router = _router(policy)
    _request(router, LOW, RequestContext(route=RouteOverride.CLOUD))
    _request(router, LOW, RequestContext(route=RouteOverride.EDGE))
    _request(router, LOW)                      # escalated
    _request(router, LOW, escalation=FAILED)   # escalated, fell back
    _request(router, CONFIDENT)                # sampled: not escalated by the threshold
    _request(router, CONFIDENT)
    assert router.budget.realised_rate == pytest.approx(0.5)  # 2 of the 4 counted rows


def test_budget_shift_lowers_the_threshold_for_later_requests() -> None:
    """Escalating above the target moves the threshold down until rows stay at the edge."""
    policy = POLICY.model_copy(update={
        "budget": BudgetPolicy(target_rate=0.0, step=0.05, max_shift=0.5)})
    router = _router(policy)
    answers = [_request(router, 0.4) for _ in range(4)]
    assert answers[0] == (C, R.LOW_CONFIDENCE)
    assert answers[-1] == (E, R.BUDGET_EXHAUSTED)


def test_forced_requests_draw_no_samples() -> None:
    """A forced request leaves the sampler's random sequence untouched."""
    rng = np.random.default_rng(3)
    router = Router(POLICY.model_copy(update={"shadow_rate": 0.5}), clock=FakeClock(),
                    rng=rng)
    before = rng.bit_generator.state
    _request(router, CONFIDENT, RequestContext(route=RouteOverride.EDGE))
    assert rng.bit_generator.state == before
    _request(router, CONFIDENT)
    assert rng.bit_generator.state != before


def test_shadow_rows_are_listed_and_answered_at_the_edge() -> None:
    """Sampled rows are in the plan's shadow rows and come back as edge answers."""
    router = _router(POLICY.model_copy(update={"shadow_rate": 0.5}), seed=1)
    plan = router.plan(np.full(200, CONFIDENT), np.zeros(200, dtype=np.int64),
                       RequestContext())
    assert 60 < plan.shadow_rows.size < 140
    assert not plan.permit
    routing = router.record(plan)
    assert set(routing.routes()) == {E}
    assert [REASONS[c] for c in routing.reason[plan.shadow_rows]] == (
        [R.SAMPLED] * plan.shadow_rows.size)


def test_failed_escalation_falls_back_only_for_cloud_rows() -> None:
    """In a mixed request a failed escalation turns only the escalated rows into fallbacks."""
    router = _router()
    plan = router.plan(np.array([CONFIDENT, LOW, CONFIDENT, LOW]), np.zeros(4, dtype=np.int64),
                       RequestContext())
    routing = router.record(plan, FAILED)
    assert routing.routes() == [E, F, E, F]
    assert routing.reasons() == [R.CONFIDENT, R.CLOUD_FAILED, R.CONFIDENT, R.CLOUD_FAILED]
    assert plan.reasons()[1] is R.LOW_CONFIDENCE  # the plan itself is unchanged


def test_router_builds_its_signals_from_the_policy() -> None:
    """Every signal is configured from the policy's sections."""
    policy = Policy(
        name="t",
        threshold=0.5,
        latency=LatencyPolicy(rtt_quantile=0.5, rtt_window=7),
        budget=BudgetPolicy(target_rate=0.1, step=0.03, max_shift=0.05, window=9),
        breaker=BreakerPolicy(failures_to_open=2, half_open_after_s=4.0),
        shadow_rate=0.25,
    )
    router = _router(policy)
    assert router.rtt.quantile == 0.5
    assert (router.budget.target_rate, router.budget.step, router.budget.max_shift) == (
        0.1, 0.03, 0.05)
    assert (router.breaker.failures_to_open, router.breaker.half_open_after_s) == (2, 4.0)
    assert router.sampler.rate == 0.25
    assert router.drift is None


def test_drift_sees_every_confidence() -> None:
    """With a calibration histogram in the policy, every recorded row feeds the drift monitor."""
    reference = calibration_histogram(np.random.default_rng(0).random(500), bins=10)
    router = _router(POLICY.model_copy(update={"calibration_histogram": reference}))
    assert router.drift is not None
    plan = router.plan(np.full(30, CONFIDENT), np.zeros(30, dtype=np.int64), RequestContext())
    router.record(plan)
    assert int(np.sum(router.drift.observed_counts())) == 30


def test_later_rows_are_answered_at_the_edge_then_taken_back() -> None:
    """A plan that escalates behind the answer records its rows at the edge (the budget
    counts them), needs no outcome then, and record_later turns them into cloud answers
    or, on failure, edge fallbacks that count against the breaker."""
    router = _router()
    ctx = RequestContext(better=True)
    plan = router.plan(np.array([LOW, CONFIDENT]), np.array([0, 0]), ctx)
    routing = router.record(plan)
    assert [r.value for r in routing.routes()] == ["edge", "edge"]
    assert router.budget.realised_rate == 0.5
    done = router.record_later(plan, routing, OK)
    assert [r.value for r in done.routes()] == ["cloud", "edge"]
    assert router.rtt.count == 1
    failed = router.record_later(plan, routing, FAILED)
    assert failed.routes()[0] is Route.EDGE_FALLBACK
    assert failed.reasons()[0] is Reason.CLOUD_FAILED
    with pytest.raises(ValueError, match="no rows"):
        router.record_later(router.plan(np.array([CONFIDENT]), np.array([0]), ctx),
                            routing, OK)
