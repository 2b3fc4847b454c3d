"""Per-agent escalation limits: token buckets of rows, chosen by agent id, label, default."""

from __future__ import annotations

import pytest

from edgecloud.cloud_gateway.limits import EscalationLimiter, RateLimit
from edgecloud.core.errors import Overloaded


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    """An agent sends its burst at once, is refused after, and earns rows back over time."""
    clock = Clock()
    limiter = EscalationLimiter(RateLimit.of(2.0, 4), clock=clock)
    for _ in range(4):
        limiter.admit("cam-7", 1)
    with pytest.raises(Overloaded, match="agent cam-7 is over its escalation limit "
                                         r"\(2 rows/s, burst 4\)"):
        limiter.admit("cam-7", 1)
    limiter.admit("cam-8", 4)  # each agent has a bucket of its own
    clock.now += 1.0
    limiter.admit("cam-7", 2)
    with pytest.raises(Overloaded):
        limiter.admit("cam-7", 1)
    clock.now += 60.0  # never more than the burst
    limiter.admit("cam-7", 4)
    with pytest.raises(Overloaded):
        limiter.admit("cam-7", 1)


def test_a_request_larger_than_the_burst_is_refused_saying_so() -> None:
    """A request with more rows than the burst can never pass, and the message says why."""
    limiter = EscalationLimiter(RateLimit.of(10.0), clock=Clock())
    with pytest.raises(Overloaded, match="a request of 11 rows is larger than"):
        limiter.admit("cam-7", 11)
    limiter.admit("cam-7", 10)


def test_the_agents_own_limit_wins_then_its_strictest_label_then_the_default() -> None:
    """Limits are looked up by agent id, then by the labels it announced, then the default;
    without any, nobody is limited."""
    labels = {"cam-1": {"site": "berlin", "hw": "jetson"}, "cam-2": {"site": "paris"}}
    limiter = EscalationLimiter(
        RateLimit.of(50.0), {"cam-1": RateLimit.of(1.0)},
        {("site", "berlin"): RateLimit.of(10.0), ("hw", "jetson"): RateLimit.of(5.0)},
        labels_of=labels.get, clock=Clock())
    assert limiter.limit_for("cam-1") == RateLimit.of(1.0)
    labels["cam-3"] = {"site": "berlin", "hw": "jetson"}
    assert limiter.limit_for("cam-3") == RateLimit.of(5.0)
    assert limiter.limit_for("cam-2") == RateLimit.of(50.0)
    assert limiter.limit_for("never-seen") == RateLimit.of(50.0)
    unlimited = EscalationLimiter(clock=Clock())
    assert not unlimited.enabled
    unlimited.admit("cam-1", 10**6)
