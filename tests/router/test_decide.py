"""Tests for the routing rules: every reason, and the order the rules apply in."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.router.decide import (
    BETTER as CODES,
)
from edgecloud.router.decide import (
    REASONS,
    Better,
    Plan,
    Reason,
    RequestContext,
    Route,
    RouteOverride,
    Side,
    Signals,
    better_codes,
    decide,
    route_rows,
)
from edgecloud.router.policy import LatencyPolicy, Policy

# Global threshold 0.5, class 1 at 0.8; a default budget of 250 ms.
POLICY = Policy(
    name="digits",
    threshold=0.5,
    class_thresholds={1: 0.8},
    latency=LatencyPolicy(default_budget_ms=250.0),
)

AUTO = RequestContext()
NONE = Signals()
DOWN = Signals(cloud_available=False)
SLOW = Signals(cloud_rtt_s=0.3)  # longer than the 0.25 s default budget
SAMPLED = Signals(sampled=np.array([True]))

E, C, S = Side.EDGE, Side.CLOUD, Side.SHADOW
R = Reason


# One situation per entry: confidence, predicted class, request, signals → route, reason,
# threshold. Kept out of the formatter so each entry stays on a line or two.
# fmt: off
CASES = [
    # Plain threshold.
    pytest.param(0.7, 0, AUTO, NONE, E, R.CONFIDENT, 0.5, id="confident"),
    pytest.param(0.5, 0, AUTO, NONE, E, R.CONFIDENT, 0.5, id="at-threshold-stays"),
    pytest.param(0.3, 0, AUTO, NONE, C, R.LOW_CONFIDENCE, 0.5, id="low-confidence"),
    pytest.param(0.7, 1, AUTO, NONE, C, R.LOW_CONFIDENCE, 0.8, id="class-threshold"),
    pytest.param(0.85, 1, AUTO, NONE, E, R.CONFIDENT, 0.8, id="class-threshold-met"),
    pytest.param(math.nan, 0, AUTO, NONE, C, R.LOW_CONFIDENCE, 0.5, id="nan-escalates"),
    # Forced routes come first, whatever the signals say.
    pytest.param(
        0.1, 0, RequestContext(route=RouteOverride.EDGE), NONE, E, R.FORCED, 0.5,
        id="forced-edge",
    ),
    pytest.param(
        0.9, 0, RequestContext(route=RouteOverride.CLOUD), NONE, C, R.FORCED, 0.5,
        id="forced-cloud",
    ),
    pytest.param(
        0.1, 0, RequestContext(route=RouteOverride.CLOUD), DOWN, E, R.CLOUD_UNAVAILABLE, 0.5,
        id="forced-cloud-needs-a-permit",
    ),
    pytest.param(
        0.9, 0, RequestContext(route=RouteOverride.EDGE), SAMPLED, E, R.FORCED, 0.5,
        id="forced-edge-beats-sampling",
    ),
    # A request's threshold replaces the policy's and is never shifted.
    pytest.param(
        0.3, 0, RequestContext(threshold_override=0.2), NONE, E, R.CONFIDENT, 0.2,
        id="override-lower",
    ),
    pytest.param(
        0.85, 1, RequestContext(threshold_override=0.9), NONE, C, R.LOW_CONFIDENCE, 0.9,
        id="override-replaces-class-threshold",
    ),
    pytest.param(
        0.45, 0, RequestContext(threshold_override=0.5), Signals(threshold_shift=-0.2),
        C, R.LOW_CONFIDENCE, 0.5,
        id="override-not-shifted",
    ),
    # Cloud unavailable, then time, then budget.
    pytest.param(0.3, 0, AUTO, DOWN, E, R.CLOUD_UNAVAILABLE, 0.5, id="breaker-open"),
    pytest.param(
        0.3, 0, AUTO, Signals(cloud_available=False, cloud_rtt_s=9.0),
        E, R.CLOUD_UNAVAILABLE, 0.5,
        id="unavailable-before-no-time",
    ),
    pytest.param(0.3, 0, AUTO, SLOW, E, R.NO_TIME, 0.5, id="rtt-over-default-budget"),
    pytest.param(
        0.3, 0, AUTO, Signals(cloud_rtt_s=0.25), C, R.LOW_CONFIDENCE, 0.5,
        id="rtt-equal-to-budget-fits",
    ),
    pytest.param(
        0.3, 0, RequestContext(time_left_s=0.1), Signals(cloud_rtt_s=0.2),
        E, R.NO_TIME, 0.5,
        id="rtt-over-request-deadline",
    ),
    pytest.param(
        0.3, 0, RequestContext(time_left_s=1.0), SLOW, C, R.LOW_CONFIDENCE, 0.5,
        id="long-deadline-fits",
    ),
    pytest.param(
        0.3, 0, RequestContext(time_left_s=-1.0), NONE, C, R.LOW_CONFIDENCE, 0.5,
        id="unknown-rtt-assumed-to-fit",
    ),
    pytest.param(
        0.45, 0, AUTO, Signals(cloud_rtt_s=1.0, threshold_shift=-0.1),
        E, R.NO_TIME, 0.4,
        id="no-time-before-budget",
    ),
    pytest.param(
        0.45, 0, AUTO, Signals(threshold_shift=-0.1), E, R.BUDGET_EXHAUSTED, 0.4,
        id="budget-lowers-threshold",
    ),
    pytest.param(
        0.3, 0, AUTO, Signals(threshold_shift=-0.1), C, R.LOW_CONFIDENCE, 0.4,
        id="budget-not-enough",
    ),
    pytest.param(
        0.0, 0, AUTO, Signals(threshold_shift=-0.9), E, R.BUDGET_EXHAUSTED, 0.0,
        id="shift-clipped-at-zero",
    ),
    pytest.param(
        math.nan, 0, AUTO, Signals(threshold_shift=-0.9), C, R.LOW_CONFIDENCE, 0.0,
        id="nan-escalates-despite-budget",
    ),
    pytest.param(
        0.55, 0, AUTO, Signals(threshold_shift=0.1), E, R.CONFIDENT, 0.5,
        id="positive-shift-is-credit-only",
    ),
    pytest.param(
        0.45, 0, AUTO, Signals(threshold_shift=0.1), C, R.LOW_CONFIDENCE, 0.5,
        id="positive-shift-keeps-base",
    ),
    # Shadow sampling: only confident rows, only when the cloud can take them.
    pytest.param(0.9, 0, AUTO, SAMPLED, S, R.SAMPLED, 0.5, id="sampled"),
    pytest.param(
        0.9, 0, AUTO, Signals(cloud_available=False, sampled=np.array([True])),
        E, R.CONFIDENT, 0.5,
        id="sampled-but-breaker-open",
    ),
    pytest.param(
        0.9, 0, AUTO, Signals(cloud_rtt_s=0.3, sampled=np.array([True])),
        E, R.CONFIDENT, 0.5,
        id="sampled-but-no-time",
    ),
    pytest.param(
        0.3, 0, AUTO, SAMPLED, C, R.LOW_CONFIDENCE, 0.5, id="sampled-low-row-is-low"
    ),
    pytest.param(
        0.45, 0, AUTO, Signals(threshold_shift=-0.1, sampled=np.array([True])),
        E, R.BUDGET_EXHAUSTED, 0.4,
        id="sampling-ignores-rows-under-base",
    ),
]
# fmt: on


@pytest.mark.parametrize(
    ("confidence", "predicted", "ctx", "signals", "side", "reason", "threshold"), CASES
)
def test_decision_table(
    confidence: float,
    predicted: int,
    ctx: RequestContext,
    signals: Signals,
    side: Side,
    reason: Reason,
    threshold: float,
) -> None:
    """Each row of the table pins the side, reason and threshold for one situation."""
    plan = decide(POLICY, np.array([confidence]), np.array([predicted]), ctx, signals)
    assert plan.rows == 1
    assert plan.side[0] == side
    assert REASONS[plan.reason[0]] is reason
    assert plan.threshold[0] == pytest.approx(threshold)
    if math.isnan(confidence):
        assert math.isnan(plan.confidence[0])
    else:
        assert plan.confidence[0] == confidence
    assert plan.cloud_rows.tolist() == ([0] if side is C else [])
    assert plan.shadow_rows.tolist() == ([0] if side is S else [])
    assert plan.permit is (side is C)
    assert plan.forced is (ctx.route is not RouteOverride.AUTO)


def test_batch_plans_each_row() -> None:
    """A batch gets one side and reason per row, in order, and the row lists match."""
    signals = Signals(threshold_shift=-0.05, sampled=np.array([False, True, False, False]))
    plan = decide(
        POLICY, np.array([0.9, 0.95, 0.2, 0.47]), np.array([0, 0, 0, 0]), signals=signals
    )
    assert list(zip(plan.side.tolist(), plan.reasons(), strict=True)) == [
        (E, R.CONFIDENT),
        (S, R.SAMPLED),
        (C, R.LOW_CONFIDENCE),
        (E, R.BUDGET_EXHAUSTED),
    ]
    assert plan.cloud_rows.tolist() == [2]
    assert plan.shadow_rows.tolist() == [1]
    assert plan.permit


def test_empty_batch() -> None:
    """Zero rows give an empty plan that escalates nothing."""
    plan = decide(POLICY, np.zeros(0), np.zeros(0, dtype=np.int64))
    assert plan.rows == 0
    assert plan.cloud_rows.size == 0
    assert not plan.permit


def test_route_rows_scores_then_decides() -> None:
    """route_rows is score_rows followed by decide."""
    plan = route_rows(POLICY, np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
    assert plan.reasons() == [R.CONFIDENT, R.LOW_CONFIDENCE]
    assert plan.confidence[0] == pytest.approx(0.85)


def test_plan_is_an_immutable_value() -> None:
    """A plan's fields cannot be reassigned, and a one-row plan's shared arrays are read-only."""
    plan = decide(POLICY, np.array([0.9]), np.array([0]))
    assert isinstance(plan, Plan)
    with pytest.raises(AttributeError):
        plan.permit = True  # type: ignore[misc]
    with pytest.raises(ValueError):
        plan.side[0] = Side.CLOUD


def test_wire_strings() -> None:
    """Routes and reasons carry the strings the agent puts in response parameters."""
    assert {r.value for r in Route} == {"edge", "cloud", "edge_fallback"}
    assert {r.value for r in Reason} == {
        "confident",
        "low_confidence",
        "no_time",
        "budget_exhausted",
        "cloud_unavailable",
        "sampled",
        "forced",
        "cloud_failed",
    }
    assert RequestContext(route="cloud").route is RouteOverride.CLOUD  # type: ignore[arg-type]


@pytest.mark.parametrize("override", [-0.1, 1.5, math.nan])
def test_bad_threshold_override_is_refused(override: float) -> None:
    """A request threshold outside [0, 1] is refused when the context is built."""
    with pytest.raises(ValueError, match="confidence threshold"):
        RequestContext(threshold_override=override)


def test_bad_route_override_is_refused() -> None:
    """An unknown route parameter is refused when the context is built."""
    with pytest.raises(ValueError):
        RequestContext(route="sideways")  # type: ignore[arg-type]


def test_mismatched_shapes_are_refused() -> None:
    """Confidence, predicted classes and samples must all have one entry per row."""
    with pytest.raises(ValueError, match="predicted"):
        decide(POLICY, np.array([0.5, 0.5]), np.array([0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        decide(POLICY, np.array([[0.5]]), np.array([[0]]))
    with pytest.raises(ValueError, match="sampled"):
        decide(POLICY, np.array([0.5]), np.array([0]), signals=Signals(sampled=np.ones(2)))
    with pytest.raises(ValueError, match="shift"):
        decide(POLICY, np.array([0.5]), np.array([0]),
               signals=Signals(threshold_shift=-math.inf))


@pytest.mark.parametrize("available", [True, False])
@pytest.mark.parametrize("rtt", [None, 0.05, 5.0])
@pytest.mark.parametrize("shift", [0.0, -0.2, 0.3])
@pytest.mark.parametrize("route", list(RouteOverride))
def test_many_rows_decide_like_one_row_at_a_time(available, rtt, shift, route) -> None:
    """Requests of many rows (array path) get exactly the plan of the one-row path."""
    rng = np.random.default_rng(5)
    conf = rng.random(200)
    conf[:5] = np.nan
    predicted = rng.integers(0, 10, 200)
    policy = Policy(name="t", threshold=0.5, class_thresholds={3: 0.8, 7: 0.2})
    sampled = rng.random(200) < 0.3
    signals = Signals(cloud_available=available, cloud_rtt_s=rtt, threshold_shift=shift,
                      sampled=sampled)
    ctx = RequestContext(route=route, time_left_s=1.0)
    many = decide(policy, conf, predicted, ctx, signals)
    one_by_one = [
        decide(policy, conf[i:i + 1], predicted[i:i + 1], ctx,
               Signals(cloud_available=available, cloud_rtt_s=rtt, threshold_shift=shift,
                       sampled=sampled[i:i + 1]))
        for i in range(200)
    ]
    assert many.side.tolist() == [p.side[0] for p in one_by_one]
    assert many.reason.tolist() == [p.reason[0] for p in one_by_one]
    np.testing.assert_array_equal(many.threshold, [p.threshold[0] for p in one_by_one])
    np.testing.assert_array_equal(many.confidence, conf)
    assert many.cloud_rows.tolist() == [i for i, p in enumerate(one_by_one) if p.permit]
    assert many.shadow_rows.tolist() == [i for i, p in enumerate(one_by_one)
                                         if p.shadow_rows.size]


BETTER = RequestContext(better=True)


def test_better_defers_the_rows_the_rules_escalate() -> None:
    """With ``better`` a low-confidence row goes to side LATER (not CLOUD) with its usual
    reason, a confident row stays at the edge, and the better codes say which is which."""
    plan = decide(POLICY, np.array([0.3, 0.7, 0.1]), np.array([0, 0, 2]), BETTER)
    assert plan.side.tolist() == [Side.LATER, Side.EDGE, Side.LATER]
    assert plan.reasons() == [R.LOW_CONFIDENCE, R.CONFIDENT, R.LOW_CONFIDENCE]
    assert plan.cloud_rows.size == 0 and plan.later_rows.tolist() == [0, 2]
    assert plan.permit
    assert [CODES[c] for c in better_codes(plan).tolist()] == [
        Better.PENDING, Better.CONFIDENT, Better.PENDING]
    one = decide(POLICY, np.array([0.3]), np.array([0]), BETTER)
    assert one.side.tolist() == [Side.LATER] and one.later_rows.tolist() == [0]


def test_better_says_why_no_better_answer_comes() -> None:
    """Under ``better`` the budget's refusal and an open breaker are the rows' better codes
    (budget_spent, cloud_unavailable); the request's deadline does not hold a row back."""
    budget = decide(POLICY, np.array([0.45, 0.45]), np.array([0, 0]), BETTER,
                    Signals(threshold_shift=-0.1))
    assert [CODES[c].value for c in better_codes(budget).tolist()] == ["budget_spent"] * 2
    assert not budget.permit
    down = decide(POLICY, np.array([0.3]), np.array([0]), BETTER, DOWN)
    assert [CODES[c].value for c in better_codes(down).tolist()] == ["cloud_unavailable"]
    late = decide(POLICY, np.array([0.3]), np.array([0]),
                  RequestContext(time_left_s=0.01, better=True), SLOW)
    assert late.side.tolist() == [Side.LATER] and late.reasons() == [R.LOW_CONFIDENCE]
    forced = decide(POLICY, np.array([0.9, 0.9]), np.array([0, 0]),
                    RequestContext(route=RouteOverride.CLOUD, better=True))
    assert forced.later_rows.tolist() == [0, 1] and forced.forced


def test_better_cannot_go_with_a_forced_edge() -> None:
    """A request forced to the edge that asks for a better answer is refused when made."""
    with pytest.raises(ValueError, match="better answer"):
        RequestContext(route=RouteOverride.EDGE, better=True)
