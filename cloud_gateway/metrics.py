"""Prometheus metrics of the gateway, on a registry owned by the process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class GatewayMetrics:
    """Requests, latency, batch sizes and queue depth per model."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "edgecloud_gateway_requests", "Inference requests answered", ["model"],
            registry=self.registry,
        )
        self.rows = Counter(
            "edgecloud_gateway_rows", "Rows inferred", ["model"], registry=self.registry
        )
        self.errors = Counter(
            "edgecloud_gateway_errors", "Requests refused or failed", ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgecloud_gateway_latency_seconds", "Time from validation to answer", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_rows = Histogram(
            "edgecloud_gateway_batch_rows", "Rows per model run", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.limited_rows = Counter(
            "edgecloud_gateway_limited_rows",
            "Rows refused because the calling agent was over its escalation limit",
            registry=self.registry,
        )
        self.queue_rows = Gauge(
            "edgecloud_gateway_queue_rows", "Rows waiting for a batch", ["model"],
            registry=self.registry,
        )

    def observe_request(self, model: str, seconds: float, rows: int) -> None:
        """Count one answered request."""
        self.requests.labels(model).inc()
        self.rows.labels(model).inc(rows)
        self.latency.labels(model).observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int, int], None]:
        """A callback for the batcher: rows in the batch and rows still queued."""
        batch = self.batch_rows.labels(model)
        queue = self.queue_rows.labels(model)

        def observe(rows: int, queued: int) -> None:
            batch.observe(rows)
            queue.set(queued)

        return observe
