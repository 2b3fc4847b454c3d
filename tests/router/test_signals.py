"""Tests for the run-time signals: round-trip estimate, budget, breaker, sampler."""

from __future__ import annotations

import numpy as np
import pytest
from fake_clock import FakeClock

from edgecloud.router.decide import RequestContext
from edgecloud.router.policy import BudgetPolicy, Policy
from edgecloud.router.runtime import Escalation, Router
from edgecloud.router.signals import (
    BreakerState,
    CircuitBreaker,
    EscalationBudget,
    RttEstimator,
    ShadowSampler,
)

# Round-trip estimator


def test_rtt_unknown_before_any_observation() -> None:
    """With no round trips seen, the estimate is None (unknown)."""
    assert RttEstimator().estimate() is None


def test_rtt_quantile_over_sliding_window() -> None:
    """The estimate is the quantile of only the last `window` round trips."""
    rtt = RttEstimator(quantile=0.5, window=3)
    for seconds in (10.0, 0.1, 0.2, 0.3):
        rtt.observe(seconds)
    assert rtt.count == 3
    assert rtt.estimate() == pytest.approx(0.2)
    high = RttEstimator(quantile=0.9, window=100)
    for seconds in np.linspace(0.0, 1.0, 11):
        high.observe(float(seconds))
    assert high.estimate() == pytest.approx(0.9)


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf")])
def test_rtt_refuses_nonsense(seconds: float) -> None:
    """Negative or non-finite round trips are refused."""
    with pytest.raises(ValueError, match="round trip"):
        RttEstimator().observe(seconds)


# Escalation budget


def test_budget_update_rule() -> None:
    """Each row moves τ by −η(1[escalated] − target), clipped to ±max_shift."""
    budget = EscalationBudget(target_rate=0.2, step=0.1, max_shift=0.15)
    budget.observe(True)
    assert budget.shift == pytest.approx(-0.08)
    budget.observe(False)
    assert budget.shift == pytest.approx(-0.06)
    budget.observe(np.array([True, True]))
    assert budget.shift == pytest.approx(-0.15)  # -0.14, then clipped at -0.15
    budget.observe(np.zeros(20, dtype=bool))
    assert budget.shift == pytest.approx(0.15)


def test_budget_batch_equals_sequence() -> None:
    """Observing an array is the same as observing its entries one at a time, in order."""
    flags = np.random.default_rng(3).random(300) < 0.4
    batch = EscalationBudget(0.25, step=0.02, max_shift=0.1)
    batch.observe(flags)
    one_by_one = EscalationBudget(0.25, step=0.02, max_shift=0.1)
    for flag in flags:
        one_by_one.observe(bool(flag))
    assert batch.shift == pytest.approx(one_by_one.shift)
    assert batch.realised_rate == one_by_one.realised_rate


def test_budget_inert_without_target() -> None:
    """With no target rate the shift stays 0, while the realised rate is still reported."""
    budget = EscalationBudget(target_rate=None, window=4)
    assert budget.realised_rate is None
    budget.observe(np.array([True, True, True, False, False, True]))
    assert budget.shift == 0.0
    assert budget.realised_rate == pytest.approx(0.5)  # last four: T, F, F, T


def _run_stream(policy: Policy, n_batches: int, seed: int) -> Router:
    """Route a stream of uniform confidences through a router, feeding the outcome back."""
    rng = np.random.default_rng(seed)
    router = Router(policy, clock=FakeClock(), rng=np.random.default_rng(0))
    for _ in range(n_batches):
        confidence = rng.random(4)
        plan = router.plan(confidence, np.zeros(4, dtype=np.int64), RequestContext())
        router.record(plan, Escalation(ok=True) if plan.permit else None)
    return router


def test_budget_holds_rate_near_target() -> None:
    """On a stream that would escalate half the rows, the budget holds the rate near 20%."""
    policy = Policy(
        name="t",
        threshold=0.5,  # uniform confidences: 50% would escalate
        budget=BudgetPolicy(target_rate=0.2, step=0.002, max_shift=0.5, window=2000),
    )
    state = _run_stream(policy, n_batches=2500, seed=11)
    assert state.budget.realised_rate == pytest.approx(0.2, abs=0.03)
    assert state.budget.shift == pytest.approx(-0.3, abs=0.06)


def test_budget_never_adds_escalations() -> None:
    """When the natural rate is under the target, the budget escalates no extra rows."""
    policy = Policy(
        name="t",
        threshold=0.3,  # 30% escalate naturally
        budget=BudgetPolicy(target_rate=0.6, step=0.01, max_shift=0.2, window=2000),
    )
    state = _run_stream(policy, n_batches=1000, seed=5)
    assert state.budget.shift == pytest.approx(0.2)  # credit saved up to the cap
    assert state.budget.realised_rate == pytest.approx(0.3, abs=0.03)


# Circuit breaker


def test_breaker_full_cycle() -> None:
    """closed → open after N failures → half-open after the wait → closed on a probe success."""
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(2):
        breaker.record_failure()
        assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert not breaker.available()

    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.available()
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    assert not breaker.available()

    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allow()


def test_failed_probe_reopens_and_waits_again() -> None:
    """A probe that fails opens the breaker again for another full wait."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_success_resets_failure_count() -> None:
    """Only consecutive failures count: a success in between starts the count over."""
    breaker = CircuitBreaker(3, 1.0, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_available_does_not_take_the_probe() -> None:
    """Asking whether the cloud is available leaves the probe for the caller of allow()."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.available()
    assert breaker.available()
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow()


def test_lost_probe_frees_its_slot() -> None:
    """A probe whose outcome never arrives lets another probe through after another wait."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_late_outcomes_while_open_are_ignored() -> None:
    """Answers to requests sent before the breaker opened neither close nor extend it."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock)
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    clock.advance(1.5)
    breaker.record_failure()
    clock.advance(0.5)
    assert breaker.allow()


def test_probe_waits_grow_from_the_first_to_the_longest() -> None:
    """With a first-probe delay, each failed probe doubles the wait, capped at
    half_open_after_s; a success starts the next outage from the first delay again."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 3.0, clock, first_probe_after_s=0.25)
    breaker.record_failure()
    waits = []
    for _ in range(6):
        waits.append(breaker.probe_at - clock())
        clock.advance(waits[-1])
        assert breaker.allow()
        breaker.record_failure()
    assert waits == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    clock.advance(breaker.probe_at - clock())
    assert breaker.allow()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.probe_at - clock() == 0.25


def test_probe_waits_are_jittered_within_half_to_whole() -> None:
    """With a generator, each wait is drawn in [1/2, 1] of its nominal length, and two
    breakers seeded differently do not probe in step."""
    def first_wait(seed: int) -> float:
        clock = FakeClock()
        breaker = CircuitBreaker(1, 10.0, clock, first_probe_after_s=1.0,
                                 rng=np.random.default_rng(seed))
        breaker.record_failure()
        return breaker.probe_at - clock()

    waits = {first_wait(seed) for seed in range(20)}
    assert all(0.5 <= w <= 1.0 for w in waits)
    assert len(waits) == 20


def test_reconnection_makes_an_open_breaker_probe_now() -> None:
    """reconnected() lets an open breaker probe at once and starts its backoff over; it
    leaves a closed breaker and a probe already out alone."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 60.0, clock, first_probe_after_s=0.25)
    breaker.reconnected()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    for _ in range(4):
        clock.advance(breaker.probe_at - clock())
        assert breaker.allow()
        breaker.record_failure()
    assert not breaker.available()
    breaker.reconnected()
    assert breaker.allow()
    breaker.reconnected()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()
    breaker.record_failure()
    assert breaker.probe_at - clock() == 0.5  # one failed probe into a new backoff


# Shadow sampler


def test_sampler_is_deterministic_for_a_seed() -> None:
    """Two samplers on equally seeded generators pick the same rows, near the rate."""
    a = ShadowSampler(0.1, np.random.default_rng(42))
    b = ShadowSampler(0.1, np.random.default_rng(42))
    picks = a.sample(10_000)
    np.testing.assert_array_equal(picks, b.sample(10_000))
    assert picks.dtype == bool
    assert picks.mean() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(("rate", "value"), [(0.0, False), (1.0, True)])
def test_sampler_extremes_draw_nothing(rate: float, value: bool) -> None:
    """Rates 0 and 1 answer without consuming the generator's randomness."""
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    picks = ShadowSampler(rate, rng).sample(5)
    np.testing.assert_array_equal(picks, [value] * 5)
    assert rng.bit_generator.state == before


def test_realised_rate_matches_the_last_window_for_any_chunking():
    """Observing rows one by one or in chunks of any size gives the rate of the last
    `window` rows."""
    from edgecloud.router.signals import EscalationBudget

    rng = np.random.default_rng(3)
    flags = rng.random(500) < 0.3
    budget = EscalationBudget(0.2, step=0.01, max_shift=0.5, window=50)
    start = 0
    for size in rng.integers(1, 80, size=40):
        chunk = flags[start:start + size]
        if not len(chunk):
            break
        budget.observe(chunk)
        start += len(chunk)
        seen = flags[:start]
        assert budget.realised_rate == pytest.approx(seen[-50:].mean())
