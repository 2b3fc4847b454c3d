"""Prometheus metrics of the agent, on a registry owned by the process."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from router import Decision

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class AgentMetrics:
    """Requests, routes and reasons, latency, escalation round trips, shadow agreement."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._per_task: dict[str, tuple] = {}
        self._rows: dict[tuple, object] = {}
        self.requests = Counter(
            "edgecloud_agent_requests", "Inference requests answered", ["task"],
            registry=self.registry,
        )
        self.rows = Counter(
            "edgecloud_agent_rows", "Rows answered, by route and reason",
            ["task", "route", "reason"], registry=self.registry,
        )
        self.latency = Histogram(
            "edgecloud_agent_latency_seconds", "Request latency at the agent", ["task"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.rtt = Histogram(
            "edgecloud_agent_escalation_seconds", "Round trip of successful escalations",
            ["task"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.cloud_failures = Counter(
            "edgecloud_agent_escalation_failures", "Escalations that failed, by error kind",
            ["task", "kind"], registry=self.registry,
        )
        self.shadow_rows = Counter(
            "edgecloud_agent_shadow_rows", "Shadow-sampled rows answered by the cloud",
            ["task"], registry=self.registry,
        )
        self.shadow_agree = Counter(
            "edgecloud_agent_shadow_agree", "Shadow rows where edge and cloud agreed",
            ["task"], registry=self.registry,
        )

    def observe(self, task: str, decisions: Sequence[Decision], seconds: float) -> None:
        """Count one answered request and its rows."""
        children = self._per_task.get(task)
        if children is None:
            children = (self.requests.labels(task), self.latency.labels(task))
            self._per_task[task] = children
        children[0].inc()
        children[1].observe(seconds)
        if len(decisions) == 1:
            self._row_counter(task, decisions[0]).inc()
            return
        for (route, reason), count in Tally((d.route, d.reason) for d in decisions).items():
            self._row_counter(task, Decision(route, reason, 0.0, 0.0)).inc(count)

    def _row_counter(self, task: str, decision: Decision):
        key = (task, decision.route, decision.reason)
        child = self._rows.get(key)
        if child is None:
            child = self.rows.labels(task, decision.route.value, decision.reason.value)
            self._rows[key] = child
        return child

    def watch_drift(self, service) -> None:
        """Expose each task's drift (PSI, KS p-value, status) at scrape time."""
        self.registry.register(_DriftCollector(service))

    def cloud_rtt(self, task: str, seconds: float) -> None:
        """Record a successful escalation's round trip."""
        self.rtt.labels(task).observe(seconds)

    def cloud_failure(self, task: str, kind: str) -> None:
        """Count a failed escalation."""
        self.cloud_failures.labels(task, kind).inc()

    def shadow(self, task: str, rows: int, agree: int) -> None:
        """Count shadow-sampled rows and how many the edge got right."""
        self.shadow_rows.labels(task).inc(rows)
        self.shadow_agree.labels(task).inc(agree)


class _DriftCollector:
    """Reads the drift monitors of a running service when Prometheus scrapes."""

    def __init__(self, service) -> None:
        self._service = service

    def describe(self):
        return []

    def collect(self):
        psi = GaugeMetricFamily("edgecloud_agent_drift_psi",
                                "Population stability index of recent scores", labels=["task"])
        pvalue = GaugeMetricFamily("edgecloud_agent_drift_ks_pvalue",
                                   "KS p-value of recent scores against calibration",
                                   labels=["task"])
        status = GaugeMetricFamily("edgecloud_agent_drift_status",
                                   "1 for the task's current drift status",
                                   labels=["task", "status"])
        for task in self._service.tasks():
            if task.drift is None:
                continue
            report = task.drift.report()
            psi.add_metric([task.name], report.psi)
            pvalue.add_metric([task.name], report.ks_pvalue)
            for name in ("stable", "warn", "alarm"):
                status.add_metric([task.name, name], 1.0 if report.status.value == name else 0.0)
        yield psi
        yield pvalue
        yield status
