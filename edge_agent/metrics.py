"""Prometheus metrics of the agent, on a registry owned by the process.

The request path only bumps plain integers (the agent's data plane runs on
one event loop thread); a collector turns them into Prometheus families when
the metrics endpoint is scraped. This keeps the per-request cost to a few
dictionary updates instead of a lock per counter.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from edgecloud.router import REASONS, ROUTES, Route, Routing

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class _Histogram:
    """Cumulative-bucket histogram in plain integers."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


_REASON_COUNT = len(REASONS)
_CELLS = len(ROUTES) * _REASON_COUNT
_ESCALATED = tuple(ROUTES.index(r) for r in (Route.CLOUD, Route.EDGE_FALLBACK))
_FALLBACK = ROUTES.index(Route.EDGE_FALLBACK)


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """What one task has done since the agent started (for the fleet status report)."""

    requests: int
    rows: int
    escalated_rows: int
    """Rows sent to the cloud (answered there or not)."""
    fallback_rows: int
    errors: int
    """Requests refused or failed."""
    shadow_rows: int
    shadow_agree: int


class AgentMetrics:
    """Requests, routes and reasons, errors, latency, escalation round trips, shadow agreement.

    The one place where the agent counts what it did: Prometheus and the
    fleet status report (:meth:`task_counts`) both read these counters.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests: dict[str, int] = {}
        self.rows: dict[str, list[int]] = {}
        """Per task, rows by (route, reason) cell: ``route_code * len(REASONS) + reason_code``."""
        self.errors: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.rtt: dict[str, _Histogram] = {}
        self.cloud_failures: dict[tuple[str, str], int] = {}
        self.fallback_rows: dict[tuple[str, str], int] = {}
        """Per (task, error kind), rows answered at the edge because their escalation failed."""
        self.shadow_rows: dict[str, int] = {}
        self.shadow_agree: dict[str, int] = {}
        self.cloud_problems: dict[str, str] = {}
        """Task -> why its escalation is refused (``not_served``, ``mismatch``), while it is."""
        self.loop_errors: dict[str, int] = {}
        """Background loop (``fleet_watch``, ``fleet_report``) -> errors it survived."""
        self.deferred_fetches = 0
        """Artifact downloads cut short by the network or the disk, to be tried again."""
        self.better_answers: dict[tuple[str, str], int] = {}
        """Per (task, state), requests for a fast answer then a better one, by how their
        record ended (answered, cloud_failed, not_escalated)."""
        self.registry.register(_AgentCollector(self))

    def observe(self, task: str, routing: Routing, seconds: float) -> None:
        """Count one answered request and its rows."""
        self.requests[task] = self.requests.get(task, 0) + 1
        histogram = self.latency.get(task)
        if histogram is None:
            histogram = self.latency[task] = _Histogram()
            self.rows[task] = [0] * _CELLS
        histogram.observe(seconds)
        counts = self.rows[task]
        route = routing.route
        if route.shape[0] == 1:
            counts[int(route[0]) * _REASON_COUNT + int(routing.reason[0])] += 1
        elif route.shape[0]:
            cells = np.bincount(route.astype(np.int64) * _REASON_COUNT + routing.reason,
                                minlength=_CELLS)
            for cell in np.flatnonzero(cells).tolist():
                counts[cell] += int(cells[cell])

    def error(self, task: str, kind: str) -> None:
        """Count a request of ``task`` refused or failed with error ``kind``."""
        self.errors[(task, kind)] = self.errors.get((task, kind), 0) + 1

    def task_counts(self, task: str) -> TaskCounts:
        """Totals for one task since start."""
        cells = self.rows.get(task) or [0] * _CELLS
        per_route = [sum(cells[r * _REASON_COUNT:(r + 1) * _REASON_COUNT])
                     for r in range(len(ROUTES))]
        return TaskCounts(
            requests=self.requests.get(task, 0),
            rows=int(sum(per_route)),
            escalated_rows=int(sum(per_route[i] for i in _ESCALATED)),
            fallback_rows=int(per_route[_FALLBACK]),
            errors=sum(v for (t, _), v in self.errors.items() if t == task),
            shadow_rows=self.shadow_rows.get(task, 0),
            shadow_agree=self.shadow_agree.get(task, 0),
        )

    def watch_drift(self, service) -> None:
        """Expose each task's drift (PSI, KS p-value, status) at scrape time."""
        self.registry.register(_DriftCollector(service))

    def cloud_rtt(self, task: str, seconds: float) -> None:
        """Record a successful escalation's round trip."""
        histogram = self.rtt.get(task)
        if histogram is None:
            histogram = self.rtt[task] = _Histogram()
        histogram.observe(seconds)

    def cloud_failure(self, task: str, kind: str, rows: int = 0) -> None:
        """Count a failed escalation of ``rows`` rows (they fall back to the edge)."""
        self.cloud_failures[(task, kind)] = self.cloud_failures.get((task, kind), 0) + 1
        if rows:
            self.fallback_rows[(task, kind)] = self.fallback_rows.get((task, kind), 0) + rows

    def fallbacks_by_reason(self, task: str) -> dict[str, int]:
        """Rows of ``task`` that fell back to the edge, by the error kind of the escalation."""
        return {kind: n for (t, kind), n in sorted(self.fallback_rows.items()) if t == task}

    def cloud_refused(self, task: str, problem: str | None) -> None:
        """Record that ``task``'s escalation is refused for ``problem``, or no longer (None)."""
        if problem is None:
            self.cloud_problems.pop(task, None)
        else:
            self.cloud_problems[task] = problem

    def fetch_deferred(self) -> None:
        """Count an artifact whose download was cut short, to be tried again."""
        self.deferred_fetches += 1

    def loop_error(self, loop: str) -> None:
        """Count an error that background ``loop`` caught, logged and survived."""
        self.loop_errors[loop] = self.loop_errors.get(loop, 0) + 1

    def better_answer(self, task: str, state: str) -> None:
        """Count a request for a better answer whose record ended in ``state``."""
        self.better_answers[(task, state)] = self.better_answers.get((task, state), 0) + 1

    def shadow(self, task: str, rows: int, agree: int) -> None:
        """Count shadow-sampled rows and how many the edge got right."""
        self.shadow_rows[task] = self.shadow_rows.get(task, 0) + rows
        self.shadow_agree[task] = self.shadow_agree.get(task, 0) + agree


def _histogram_family(name: str, doc: str, data: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["task"])
    for task, h in sorted(data.items()):
        family.add_metric([task], h.buckets(), h.sum)
    return family


class _AgentCollector:
    """Turns the agent's plain counters into Prometheus families at scrape time."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        m = self._m
        requests = CounterMetricFamily("edgecloud_agent_requests", "Inference requests answered",
                                       labels=["task"])
        for task, value in sorted(m.requests.items()):
            requests.add_metric([task], value)
        yield requests
        rows = CounterMetricFamily("edgecloud_agent_rows", "Rows answered, by route and reason",
                                   labels=["task", "route", "reason"])
        for task, cells in sorted(m.rows.items()):
            for cell, value in enumerate(cells):
                if value:
                    route, reason = divmod(cell, _REASON_COUNT)
                    rows.add_metric([task, ROUTES[route].value, REASONS[reason].value], value)
        yield rows
        errors = CounterMetricFamily("edgecloud_agent_errors",
                                     "Requests refused or failed, by error kind",
                                     labels=["task", "kind"])
        for (task, kind), value in sorted(m.errors.items()):
            errors.add_metric([task, kind], value)
        yield errors
        yield _histogram_family("edgecloud_agent_latency_seconds",
                                "Request latency at the agent", m.latency)
        yield _histogram_family("edgecloud_agent_escalation_seconds",
                                "Round trip of successful escalations", m.rtt)
        failures = CounterMetricFamily("edgecloud_agent_escalation_failures",
                                       "Escalations that failed, by error kind",
                                       labels=["task", "kind"])
        for (task, kind), value in sorted(m.cloud_failures.items()):
            failures.add_metric([task, kind], value)
        yield failures
        refused = GaugeMetricFamily(
            "edgecloud_agent_cloud_refused",
            "1 while escalation of the task is refused because the gateway's model does not "
            "fit it (problem: not_served or mismatch)", labels=["task", "problem"])
        for task, problem in sorted(m.cloud_problems.items()):
            refused.add_metric([task, problem], 1.0)
        yield refused
        better = CounterMetricFamily(
            "edgecloud_agent_better_answers",
            "Requests for a fast answer then a better one, by how the better answer ended "
            "(answered, cloud_failed, not_escalated)", labels=["task", "state"])
        for (task, state), value in sorted(m.better_answers.items()):
            better.add_metric([task, state], value)
        yield better
        loop_errors = CounterMetricFamily(
            "edgecloud_agent_loop_errors",
            "Errors a background loop caught, logged and went on after (with a backoff)",
            labels=["loop"])
        for loop, value in sorted(m.loop_errors.items()):
            loop_errors.add_metric([loop], value)
        yield loop_errors
        yield CounterMetricFamily(
            "edgecloud_agent_deferred_fetches",
            "Artifact downloads cut short by the network or the disk (tried again later)",
            value=m.deferred_fetches)
        for name, doc, data in (
            ("edgecloud_agent_shadow_rows", "Shadow-sampled rows answered by the cloud",
             m.shadow_rows),
            ("edgecloud_agent_shadow_agree", "Shadow rows where edge and cloud agreed",
             m.shadow_agree),
        ):
            family = CounterMetricFamily(name, doc, labels=["task"])
            for task, value in sorted(data.items()):
                family.add_metric([task], value)
            yield family


class _DriftCollector:
    """Reads the drift monitors of a running service when Prometheus scrapes."""

    def __init__(self, service) -> None:
        self._service = service

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        psi = GaugeMetricFamily("edgecloud_agent_drift_psi",
                                "Population stability index of recent scores", labels=["task"])
        pvalue = GaugeMetricFamily("edgecloud_agent_drift_ks_pvalue",
                                   "KS p-value of recent scores against calibration",
                                   labels=["task"])
        status = GaugeMetricFamily("edgecloud_agent_drift_status",
                                   "1 for the task's current drift status",
                                   labels=["task", "status"])
        for task in self._service.tasks():
            drift = task.router.drift
            if drift is None:
                continue
            report = drift.report()
            psi.add_metric([task.name], report.psi)
            pvalue.add_metric([task.name], report.ks_pvalue)
            for name in ("stable", "warn", "alarm"):
                status.add_metric([task.name, name], 1.0 if report.status.value == name else 0.0)
        yield psi
        yield pvalue
        yield status
