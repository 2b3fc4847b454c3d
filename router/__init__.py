"""The routing policy: which rows the edge answers and which go to the cloud.

A pure library (numpy, pydantic, PyYAML for policy text): no I/O, no clock
and no randomness of its own. The usual path through it::

    policy = parse_policy(text)
    state = RouterState.from_policy(policy, clock=time.monotonic, rng=np.random.default_rng())
    confidence, predicted = score_rows(policy, class_scores)
    decisions = decide(policy, confidence, predicted, ctx, state.signals(len(confidence)))
    state.observe_decisions(decisions)
"""

from router.decide import (
    Decision,
    Reason,
    RequestContext,
    Route,
    RouteOverride,
    Signals,
    decide,
    escalate_mask,
    route_rows,
)
from router.drift import (
    DriftMonitor,
    DriftReport,
    DriftStatus,
    calibration_histogram,
    classify,
    histogram,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic,
    psi,
)
from router.policy import (
    BreakerPolicy,
    BudgetPolicy,
    LatencyPolicy,
    Policy,
    PolicyError,
    Provenance,
    ScoreHistogram,
    ScoreName,
    ScoresKind,
    dump_policy,
    parse_policy,
)
from router.scores import (
    Entropy,
    Margin,
    MaxProb,
    Score,
    available_scores,
    get_score,
    register_score,
    score_rows,
    select_class_scores,
    to_probabilities,
)
from router.signals import (
    BreakerState,
    CircuitBreaker,
    EscalationBudget,
    RouterState,
    RttEstimator,
    ShadowSampler,
)

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "BudgetPolicy",
    "CircuitBreaker",
    "Decision",
    "DriftMonitor",
    "DriftReport",
    "DriftStatus",
    "Entropy",
    "EscalationBudget",
    "LatencyPolicy",
    "Margin",
    "MaxProb",
    "Policy",
    "PolicyError",
    "Provenance",
    "Reason",
    "RequestContext",
    "Route",
    "RouteOverride",
    "RouterState",
    "RttEstimator",
    "Score",
    "ScoreHistogram",
    "ScoreName",
    "ScoresKind",
    "ShadowSampler",
    "Signals",
    "available_scores",
    "calibration_histogram",
    "classify",
    "decide",
    "dump_policy",
    "escalate_mask",
    "get_score",
    "histogram",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic",
    "parse_policy",
    "psi",
    "register_score",
    "route_rows",
    "score_rows",
    "select_class_scores",
    "to_probabilities",
]
