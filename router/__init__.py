"""The routing policy: which rows the edge answers and which go to the cloud.

A pure library (numpy, pydantic, PyYAML for policy text): no I/O, no clock
and no randomness of its own. The usual path through it::

    policy = parse_policy(text)
    router = Router(policy, clock=time.monotonic, rng=np.random.default_rng())
    confidence, predicted = score_rows(policy, class_scores)
    plan = router.plan(confidence, predicted, ctx)         # per-row arrays: side, reason
    routing = router.record(plan, Escalation(ok=True, rtt_s=0.012))  # or None: nothing escalated

Policies are tuned offline with :func:`tune` (labelled data) or
:func:`tune_from_field` (shadow samples, agreement with the cloud), both aiming
at a :class:`TuningTarget`.
"""

from edgecloud.router.curves import Curve, fit_temperature, operating_curve
from edgecloud.router.decide import (
    BETTER,
    REASONS,
    ROUTES,
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
from edgecloud.router.drift import (
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
    psi_pvalue,
)
from edgecloud.router.policy import (
    BreakerPolicy,
    BudgetPolicy,
    LatencyPolicy,
    Policy,
    PolicyError,
    Provenance,
    ScoreHistogram,
    ScoreName,
    ScoresKind,
    TuningCurve,
    dump_policy,
    parse_policy,
)
from edgecloud.router.review import REVIEW, review_rows
from edgecloud.router.runtime import Escalation, Router, Routing
from edgecloud.router.scores import (
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
from edgecloud.router.selection import TuningError
from edgecloud.router.signals import (
    BreakerState,
    CircuitBreaker,
    EscalationBudget,
    RttEstimator,
    ShadowSampler,
)
from edgecloud.router.tuner import (
    OperatingPoint,
    ScoreReport,
    TuningReport,
    TuningTarget,
    field_arrays,
    tune,
    tune_from_field,
)

__all__ = [
    "BETTER",
    "REASONS",
    "REVIEW",
    "ROUTES",
    "Better",
    "BreakerPolicy",
    "BreakerState",
    "BudgetPolicy",
    "CircuitBreaker",
    "Curve",
    "DriftMonitor",
    "DriftReport",
    "DriftStatus",
    "Entropy",
    "Escalation",
    "EscalationBudget",
    "LatencyPolicy",
    "Margin",
    "MaxProb",
    "OperatingPoint",
    "Plan",
    "Policy",
    "PolicyError",
    "Provenance",
    "Reason",
    "RequestContext",
    "Route",
    "RouteOverride",
    "Router",
    "Routing",
    "RttEstimator",
    "Score",
    "ScoreHistogram",
    "ScoreName",
    "ScoreReport",
    "ScoresKind",
    "ShadowSampler",
    "Side",
    "Signals",
    "TuningCurve",
    "TuningError",
    "TuningReport",
    "TuningTarget",
    "available_scores",
    "better_codes",
    "calibration_histogram",
    "classify",
    "decide",
    "dump_policy",
    "field_arrays",
    "fit_temperature",
    "get_score",
    "histogram",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic",
    "operating_curve",
    "parse_policy",
    "psi",
    "psi_pvalue",
    "register_score",
    "review_rows",
    "route_rows",
    "score_rows",
    "select_class_scores",
    "to_probabilities",
    "tune",
    "tune_from_field",
]
