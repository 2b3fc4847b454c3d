"""Routing quality of the tuned router, and what planning a request costs per row.

Prints, in one run:

1. Quality, over stratified re-splits (train 50% / calibration 25% / test
   25%) of scikit-learn's bundled data sets, for three edge/cloud pairs
   trained in-process (their ``predict_proba`` stands in for the ONNX
   models):

   * digits: logistic regression (edge) against an RBF SVC (cloud);
   * digits: a tiny MLP, 8 hidden units (edge), against extra trees (cloud);
   * breast cancer: Gaussian naive Bayes (edge) against an RBF SVC (cloud).

   Each split tunes on the calibration part and measures on the test part:
   the share of the edge-to-cloud accuracy gap closed by a policy tuned for
   15% escalation; that policy's realised escalation minus its 15% target;
   and the escalation a policy tuned to stay within 0.5 points of the cloud
   needs, beside the oracle's (which escalates exactly the rows the edge gets
   wrong and the cloud right) and how often that policy keeps within 0.5
   points on the test part; and the same for a policy whose 1-point gap is
   certified at 90% confidence. Mean ± standard deviation over the splits.

2. Cost: per row, ``Router.plan()`` + ``Router.record()`` (the rules with the
   run-time signals, and the outcome taken back), and ``score_rows()`` before
   them, against a bare ``numpy.argmax`` over the
   same class probabilities, for batches of 1, 64 and 1024 rows, measured in
   the same run.

Run it from the repository root (takes well under two minutes)::

    .venv/bin/python bench/router_quality.py [--splits 10]

It needs scikit-learn (the ``examples`` extra).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from edgecloud.router import (
    Escalation,
    Policy,
    RequestContext,
    Router,
    TuningError,
    TuningTarget,
    score_rows,
    tune,
)
from edgecloud.router.curves import gap_closed, oracle_escalation

Factory = Callable[[int], object]


@dataclass(frozen=True)
class Pair:
    """An edge/cloud model pair on one data set."""

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    edge: Factory
    cloud: Factory


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def _cancer() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def _svc(c: float, seed: int) -> CalibratedClassifierCV:
    """An RBF SVC with Platt-scaled probabilities (what SVC(probability=True) did)."""
    return CalibratedClassifierCV(SVC(C=c, gamma="scale", random_state=seed), ensemble=False)


PAIRS = (
    Pair(
        "digits: logistic regression vs RBF SVC",
        _digits,
        lambda seed: LogisticRegression(C=0.05, max_iter=2000),
        lambda seed: _svc(10.0, seed),
    ),
    Pair(
        "digits: MLP(8) vs extra trees",
        _digits,
        lambda seed: MLPClassifier(hidden_layer_sizes=(8,), max_iter=400, random_state=seed),
        lambda seed: ExtraTreesClassifier(n_estimators=300, n_jobs=2, random_state=seed),
    ),
    Pair(
        "breast cancer: Gaussian NB vs RBF SVC",
        _cancer,
        lambda seed: make_pipeline(StandardScaler(), GaussianNB()),
        lambda seed: make_pipeline(StandardScaler(), _svc(3.0, seed)),
    ),
)


@dataclass
class SplitResult:
    edge_acc: float
    cloud_acc: float
    closed_at_15: float
    escalation_error: float
    escalation_for_gap: float
    oracle: float
    gap_met: bool
    certified_escalation: float
    """NaN when 1 point could not be certified at 90% on the calibration part."""
    certified_met: bool


def _hybrid(policy: Policy, edge: np.ndarray, cloud: np.ndarray,
            y: np.ndarray) -> tuple[float, float]:
    """Escalation and hybrid accuracy of a policy on a split."""
    confidence, predicted = score_rows(policy, edge)
    escalated = confidence < policy.threshold
    answer = np.where(escalated, cloud.argmax(axis=1), predicted)
    return float(escalated.mean()), float((answer == y).mean())


def run_split(pair: Pair, x: np.ndarray, y: np.ndarray, seed: int) -> SplitResult:
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=0.5, stratify=y, random_state=seed)
    x_cal, x_test, y_cal, y_test = train_test_split(
        x_rest, y_rest, train_size=0.5, stratify=y_rest, random_state=seed)
    edge_model, cloud_model = pair.edge(seed), pair.cloud(seed)
    edge_model.fit(x_train, y_train)
    cloud_model.fit(x_train, y_train)
    cal = (edge_model.predict_proba(x_cal), cloud_model.predict_proba(x_cal), y_cal)
    edge_test, cloud_test = edge_model.predict_proba(x_test), cloud_model.predict_proba(x_test)

    edge_acc = float((edge_test.argmax(axis=1) == y_test).mean())
    cloud_acc = float((cloud_test.argmax(axis=1) == y_test).mean())

    at_15, _ = tune(*cal, TuningTarget(kind="probabilities", target_escalation=0.15))
    escalation, hybrid = _hybrid(at_15, edge_test, cloud_test, y_test)
    closed = gap_closed(hybrid, edge_acc, cloud_acc)

    within, _ = tune(*cal, TuningTarget(kind="probabilities", target_gap=0.005))
    gap_escalation, gap_hybrid = _hybrid(within, edge_test, cloud_test, y_test)

    try:
        certified, _ = tune(*cal, TuningTarget(kind="probabilities", target_gap=0.01,
                                                   confidence=0.9))
    except TuningError:
        certified_escalation, certified_met = math.nan, False
    else:
        certified_escalation, certified_hybrid = _hybrid(certified, edge_test, cloud_test, y_test)
        certified_met = certified_hybrid >= cloud_acc - 0.01
    return SplitResult(
        edge_acc=edge_acc,
        cloud_acc=cloud_acc,
        closed_at_15=closed,
        escalation_error=escalation - 0.15,
        escalation_for_gap=gap_escalation,
        oracle=oracle_escalation(edge_test.argmax(axis=1) == y_test,
                                 cloud_test.argmax(axis=1) == y_test),
        gap_met=gap_hybrid >= cloud_acc - 0.005,
        certified_escalation=certified_escalation,
        certified_met=certified_met,
    )


def _ms(values: list[float], scale: float = 100.0, unit: str = "%") -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite) * scale
    std = statistics.stdev(finite) * scale if len(finite) > 1 else 0.0
    return f"{mean:6.1f} ± {std:4.1f}{unit}"


def quality(splits: int) -> None:
    print(f"Routing quality: {splits} stratified re-splits (train 50% / calibration 25% / "
          "test 25%), tuned on calibration, measured on test\n")
    for pair in PAIRS:
        x, y = pair.load()
        start = time.perf_counter()
        results = [run_split(pair, x, y, seed) for seed in range(splits)]
        took = time.perf_counter() - start
        test_rows = len(y) - len(y) // 2 - (len(y) - len(y) // 2) // 2
        print(f"{pair.name}  ({len(y)} rows, ~{test_rows} test rows per split, {took:.1f} s)")
        print(f"  edge accuracy                          {_ms([r.edge_acc for r in results])}")
        print(f"  cloud accuracy                         {_ms([r.cloud_acc for r in results])}")
        print(f"  gap closed, tuned for 15% escalation   "
              f"{_ms([r.closed_at_15 for r in results])}")
        print(f"  realised − target escalation (15%)     "
              f"{_ms([r.escalation_error for r in results], unit=' pt')}"
              f"   (mean |error| "
              f"{statistics.fmean(abs(r.escalation_error) for r in results) * 100:.1f} pt)")
        print(f"  escalation, tuned to within 0.5 pt     "
              f"{_ms([r.escalation_for_gap for r in results])}"
              f"   (within 0.5 pt on test in {sum(r.gap_met for r in results)}/{splits})")
        print(f"  oracle escalation                      {_ms([r.oracle for r in results])}")
        certified = [r.certified_escalation for r in results]
        refused = sum(math.isnan(v) for v in certified)
        print(f"  escalation, certified 1 pt at 90%      {_ms(certified)}"
              f"   (within 1 pt on test in {sum(r.certified_met for r in results)}/{splits}"
              + (f"; not certifiable in {refused}" if refused else "") + ")")
        print()


def _per_row(fn: Callable[[], object], rows: int, min_seconds: float = 0.2) -> float:
    """Median seconds per row of ``fn`` over a few timed blocks."""
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / 5:
            break
        reps *= 2
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        blocks.append((time.perf_counter() - start) / reps / rows)
    return statistics.median(blocks)


def cost() -> None:
    x, y = _digits()
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.5, stratify=y,
                                                        random_state=0)
    edge = LogisticRegression(C=0.05, max_iter=2000).fit(x_train, y_train)
    cloud = _svc(10.0, 0).fit(x_train, y_train)
    probs = edge.predict_proba(x_rest)
    policy, _ = tune(probs, cloud.predict_proba(x_rest), y_rest,
                     TuningTarget(kind="probabilities", target_escalation=0.15, name="digits"))
    untempered = policy.model_copy(update={"temperature": 1.0})
    router = Router(policy, clock=time.monotonic, rng=np.random.default_rng(0))
    plain_router = Router(untempered, clock=time.monotonic, rng=np.random.default_rng(0))
    ctx = RequestContext()
    answered = Escalation(ok=True)
    rng = np.random.default_rng(1)

    print("Cost per row (median of 5 timed blocks), same class probabilities for every column")
    print(f"  {'batch':>6} {'argmax µs':>10} {'plan µs':>10} {'score+plan µs':>16} "
          f"{'(T = 1) µs':>11} {'plan / argmax':>16}")
    print("  (plan = Router.plan + Router.record)")
    for rows in (1, 64, 1024):
        batch = probs[rng.integers(0, len(probs), size=rows)]
        confidence, predicted = score_rows(policy, batch)

        def bare(batch: np.ndarray = batch) -> object:
            return np.argmax(batch, axis=1)

        def only_decide(confidence: np.ndarray = confidence,
                        predicted: np.ndarray = predicted) -> object:
            plan = router.plan(confidence, predicted, ctx)
            return router.record(plan, answered if plan.permit else None)

        def scored(batch: np.ndarray = batch, chosen: Router = router) -> object:
            c, p = score_rows(chosen.policy, batch)
            plan = chosen.plan(c, p, ctx)
            return chosen.record(plan, answered if plan.permit else None)

        base = _per_row(bare, rows)
        dec = _per_row(only_decide, rows)
        full = _per_row(scored, rows)
        plain = _per_row(lambda batch=batch: scored(batch, plain_router), rows)
        print(f"  {rows:>6} {base * 1e6:10.3f} {dec * 1e6:10.3f} {full * 1e6:16.3f} "
              f"{plain * 1e6:11.3f} {dec / base:16.1f}")
    print(f"  (the tuned policy has temperature {policy.temperature:.3g}; the T = 1 column "
          "takes score_rows' fast path for plain probabilities)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10, help="re-splits per pair (default 10)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    start = time.perf_counter()
    quality(args.splits)
    cost()
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
