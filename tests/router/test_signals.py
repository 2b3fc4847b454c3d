"""Tests for the run-time signals: round-trip estimate, budget, breaker, sampler."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.router.decide import Decision, Reason, RequestContext, Route, RouteOverride, decide
from edgecloud.router.policy import BreakerPolicy, BudgetPolicy, LatencyPolicy, Policy
from edgecloud.router.signals import (
    BreakerState,
    CircuitBreaker,
    EscalationBudget,
    RouterState,
    RttEstimator,
    ShadowSampler,
)


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


def _run_stream(policy: Policy, n_batches: int, seed: int) -> RouterState:
    """Route a stream of uniform confidences through decide, feeding the budget back."""
    rng = np.random.default_rng(seed)
    state = RouterState.from_policy(policy, clock=FakeClock(), rng=np.random.default_rng(0))
    for _ in range(n_batches):
        confidence = rng.random(4)
        decisions = decide(
            policy, confidence, np.zeros(4, dtype=np.int64), RequestContext(), state.signals(4)
        )
        state.observe_decisions(decisions)
    return state


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


# RouterState


def test_router_state_from_policy() -> None:
    """RouterState builds every signal from the policy's sections."""
    policy = Policy(
        name="t",
        threshold=0.5,
        latency=LatencyPolicy(rtt_quantile=0.5, rtt_window=7),
        budget=BudgetPolicy(target_rate=0.1, step=0.03, max_shift=0.05, window=9),
        breaker=BreakerPolicy(failures_to_open=2, half_open_after_s=4.0),
        shadow_rate=0.25,
    )
    state = RouterState.from_policy(policy, clock=FakeClock(), rng=np.random.default_rng(0))
    assert state.rtt.quantile == 0.5
    assert (state.budget.target_rate, state.budget.step, state.budget.max_shift) == (
        0.1,
        0.03,
        0.05,
    )
    assert (state.breaker.failures_to_open, state.breaker.half_open_after_s) == (2, 4.0)
    assert state.sampler.rate == 0.25


def test_router_state_signals_reflect_the_parts() -> None:
    """signals() reports the breaker, the round-trip estimate, the shift and the samples."""
    clock = FakeClock()
    policy = Policy(
        name="t",
        threshold=0.5,
        shadow_rate=0.5,
        breaker=BreakerPolicy(failures_to_open=1, half_open_after_s=3.0),
    )
    state = RouterState.from_policy(policy, clock=clock, rng=np.random.default_rng(0))
    first = state.signals(6)
    assert first.cloud_available
    assert first.cloud_rtt_s is None
    assert first.threshold_shift == 0.0
    assert first.sampled is not None and first.sampled.shape == (6,)
    state.rtt.observe(0.05)
    state.breaker.record_failure()
    later = state.signals(1)
    assert not later.cloud_available
    assert later.cloud_rtt_s == pytest.approx(0.05)
    forced = state.signals(3, route=RouteOverride.EDGE)
    assert forced.sampled is not None and not forced.sampled.any()


def test_observe_decisions_counts_only_threshold_escalations() -> None:
    """Forced rows are skipped; shadow samples and fallbacks count by what the threshold did."""
    policy = Policy(name="t", threshold=0.5, budget=BudgetPolicy(target_rate=0.5, window=10))
    state = RouterState.from_policy(policy, clock=FakeClock(), rng=np.random.default_rng(0))

    def d(route: Route, reason: Reason) -> Decision:
        return Decision(route=route, reason=reason, score=0.0, threshold=0.5)

    state.observe_decisions(
        [
            d(Route.CLOUD, Reason.FORCED),
            d(Route.EDGE, Reason.FORCED),
            d(Route.CLOUD, Reason.LOW_CONFIDENCE),
            d(Route.EDGE_FALLBACK, Reason.CLOUD_FAILED),
            d(Route.CLOUD, Reason.SAMPLED),
            d(Route.EDGE, Reason.NO_TIME),
        ]
    )
    assert state.budget.realised_rate == pytest.approx(0.5)  # 2 of 4 counted rows


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
