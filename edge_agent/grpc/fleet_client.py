"""The agent's side of the fleet control plane over gRPC.

Holds a WatchAssignments stream to the gateway (reconnecting with
exponential backoff and jitter), hands each assignment to the
:class:`~edge_agent.model_manager.ModelManager`, fetches artifacts with
FetchArtifact, and reports status after every change and periodically.
Both loops outlive any error short of cancellation: it is counted
(``edgecloud_agent_loop_errors``), logged, and followed by a jittered,
growing backoff. While the manager wants a deferred download retried
(:attr:`~edge_agent.model_manager.ModelManager.retry_wanted`), the latest
assignment is applied again with the same kind of backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import grpc
import numpy as np
import structlog

from edgecloud.core import __version__
from edgecloud.core.auth import call_metadata
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.tls import open_channel
from edgecloud.edge_agent.hard_examples import LedgerStats
from edgecloud.edge_agent.model_manager import (
    ArtifactRef,
    Assignment,
    ModelManager,
    SignedFloor,
    SwapOutcome,
)
from edgecloud.edge_agent.service import EdgeService
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.agent.fleet")

FleetState = Literal["connecting", "connected", "disconnected", "denied"]
"""The agent's link to the fleet: ``denied`` when the gateway refuses its identity."""
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _refs(items) -> tuple[ArtifactRef, ...]:
    return tuple(ArtifactRef(r.name, r.version, r.digest, r.size, r.manifest, r.signature)
                 for r in items)


def ledger_status(stats: LedgerStats) -> pb.HardExampleLedgerStatus:
    """The hard-example ledger's counters -> wire message."""
    return pb.HardExampleLedgerStatus(
        kept=stats.kept, queued=stats.queued, queued_bytes=stats.queued_bytes,
        uploaded=stats.uploaded, evicted_age=stats.evicted_age,
        evicted_space=stats.evicted_space, quarantined=stats.quarantined,
        dropped=stats.dropped,
    )


def assignment_from(message: pb.Assignment) -> Assignment:
    """Wire assignment -> domain assignment."""
    return Assignment(message.generation, _refs(message.models), _refs(message.policies),
                      message.replica,
                      tuple(SignedFloor(f.document, f.signature) for f in message.floors))


def _swap(outcome: SwapOutcome) -> pb.SwapOutcome:
    return pb.SwapOutcome(name=outcome.name, version=outcome.version, kind=outcome.kind,
                          ok=outcome.ok, reason=outcome.reason, at=outcome.at)


def build_status(agent_id: str, labels: dict[str, str], service: EdgeService,
                 manager: ModelManager, swaps: list[SwapOutcome], *,
                 status_interval_s: float = 0.0) -> pb.AgentStatus:
    """What the agent runs and how it is doing, for ReportStatus."""
    tasks = []
    diagnostics = []
    for task in service.tasks():
        c = service.metrics.task_counts(task.name)
        entry = pb.TaskCounters(
            name=task.name, model_version=task.current.model.version,
            policy_version=(manager.running_version(task.name, "policy")
                            or task.current.policy.version),
            requests=c.requests, rows=c.rows,
            escalated_rows=c.escalated_rows, fallback_rows=c.fallback_rows, errors=c.errors,
            shadow_rows=c.shadow_rows, shadow_agree=c.shadow_agree,
            cloud_problem=task.cloud_problem.message if task.cloud_problem else "",
        )
        detail = pb.TaskDiagnostics(
            name=task.name, fallback_rows_by_reason=service.metrics.fallbacks_by_reason(task.name))
        drift = task.router.drift
        if drift is not None:
            report = drift.report()
            entry.drift_psi = report.psi
            entry.drift_ks = report.ks
            entry.drift_ks_pvalue = report.ks_pvalue
            # No verdict below the window's minimum: a PSI of a few rows means nothing.
            entry.drift_status = report.status.value if report.n >= drift.min_count else ""
            entry.score_histogram.extend(int(v) for v in drift.observed_counts())
            entry.score_bin_edges.extend(drift.reference.edges)
            detail.drift_rows = report.n
            detail.drift_min_rows = drift.min_count
        tasks.append(entry)
        diagnostics.append(detail)
    served = {entry.name for entry in tasks}
    tasks.extend(pb.TaskCounters(name=name, model_version=w.model_version,
                                 policy_version=w.policy_version, waiting_for=w.waiting_for)
                 for name, w in sorted(manager.waiting.items()) if name not in served)
    status = pb.AgentStatus(agent_id=agent_id, labels=labels, agent_version=__version__,
                            tasks=tasks, sent_at=time.time(),
                            swaps=[_swap(s) for s in swaps],
                            applied_generation=manager.applied_generation,
                            status_interval_s=status_interval_s, diagnostics=diagnostics)
    if manager.last_outcome is not None:
        status.last_swap.CopyFrom(_swap(manager.last_outcome))
    if service.hard_examples is not None:
        status.hard_examples.CopyFrom(ledger_status(service.hard_examples.stats))
    return status


class FleetClient:
    """Watches assignments, applies them, reports status."""

    def __init__(
        self,
        target: str,
        agent_id: str,
        labels: dict[str, str],
        service: EdgeService,
        *,
        status_interval_s: float = 10.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        rng: np.random.Generator | None = None,
        max_message_bytes: int = 8 * 2**20,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        on_state: Callable[[FleetState], Awaitable[None]] | None = None,
    ) -> None:
        self._auth = call_metadata(token)
        self._on_state = on_state
        self.state: FleetState = "connecting"
        """Where the link to the fleet stands (ready for fleet operations: ``connected``)."""
        self.agent_id = agent_id
        self.labels = labels
        self._service = service
        self._status_interval_s = status_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._rng = rng or np.random.default_rng()
        self._channel = open_channel(
            target,
            credentials,
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.initial_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 5000)],
        )
        self._stub = pb_grpc.FleetServiceStub(self._channel)
        self.manager: ModelManager | None = None
        self._tasks: list[asyncio.Task] = []
        self._report_soon: asyncio.Task | None = None
        """The status report due after the last assignment, when the gateway asked for
        reports to be spread."""
        self._attempt = 0  # reconnections since the last assignment arrived
        self.connected = asyncio.Event()

    async def fetch(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """FetchArtifact from ``offset``; errors come back as domain errors."""
        call = self._stub.FetchArtifact(
            pb.FetchRequest(digest=digest, offset=offset, labels=self.labels),
            metadata=self._auth)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None
        finally:
            call.cancel()

    def start(self, manager: ModelManager) -> None:
        """Start watching and reporting (inside the running loop)."""
        self.manager = manager
        self._tasks = [asyncio.create_task(self._watch_loop(), name="fleet-watch"),
                       asyncio.create_task(self._report_loop(), name="fleet-report")]

    async def aclose(self) -> None:
        """Stop, report one last time is not attempted; close the channel."""
        tasks = [*self._tasks, *([self._report_soon] if self._report_soon else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channel.close()

    def _delay(self, attempt: int) -> float:
        base = min(self._backoff_max_s, self._backoff_initial_s * (2 ** min(attempt, 16)))
        return float(base * self._rng.uniform(0.5, 1.5))

    async def _set_state(self, state: FleetState) -> None:
        if state == self.state:
            return
        self.state = state
        if self._on_state is not None:
            await self._on_state(state)

    async def _watch_loop(self) -> None:
        """Hold the assignment stream; survives anything short of cancellation.

        A refusal waits the longest backoff; any other end of the stream, and
        any error while applying, is logged (an error also counted) and the
        stream is opened again after a jittered, growing backoff.
        """
        assert self.manager is not None
        while True:
            refused = None
            try:
                reason = await self._watch_once()
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                if exc.code() in _REFUSED:
                    refused = exc
            except Exception as exc:  # the loop outlives any bug or disk error; not cancellation
                self._service.metrics.loop_error("fleet_watch")
                log.exception("fleet_watch_failed", error_type=type(exc).__name__)
                reason = f"error: {type(exc).__name__}"
            self.connected.clear()
            if refused is not None:
                # A refusal does not pass by itself: say so loudly, and ask again only as
                # often as the longest backoff (the operator may fix the tokens meanwhile).
                await self._set_state("denied")
                delay = self._delay(64)
                log.error("fleet_access_denied", agent_id=self.agent_id,
                          code=refused.code().name, error=refused.details(),
                          hint="the gateway refuses this agent: --token-file must hold the "
                          "token of the agent id given with --agent-id; no model or policy "
                          "updates until it is fixed", retry_s=round(delay, 1))
            else:
                await self._set_state("disconnected")
                delay = self._delay(self._attempt)
                self._attempt += 1
                log.info("fleet_reconnecting", reason=reason, delay_s=round(delay, 3))
            await asyncio.sleep(delay)

    async def _watch_once(self) -> str:
        """One WatchAssignments stream: apply each assignment as it comes, and apply the
        latest again (with a backoff) while the manager wants a deferred download retried.
        Returns why the stream ended; raises what broke it."""
        assert self.manager is not None
        hello = pb.AgentHello(agent_id=self.agent_id, labels=self.labels,
                              agent_version=__version__,
                              known_generation=self.manager.applied_generation)
        call = self._stub.WatchAssignments(hello, metadata=self._auth)
        read: asyncio.Future | None = None
        latest: Assignment | None = None
        spread_s = 0.0
        retries = 0
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(call.read())
                wait_s = (self._delay(retries) if latest is not None
                          and self.manager.retry_wanted else None)
                done, _ = await asyncio.wait({read}, timeout=wait_s)
                if not done:
                    assert latest is not None
                    retries += 1
                    log.info("assignment_retry", generation=latest.generation, attempt=retries)
                    await self._apply(latest, spread_s)
                    continue
                message, read = read.result(), None
                if message is grpc.aio.EOF:
                    return "stream ended"
                self._attempt = 0
                retries = 0
                self.connected.set()
                await self._set_state("connected")
                latest = assignment_from(message)
                spread_s = message.report_spread_ms / 1000.0
                await self._apply(latest, spread_s)
        finally:
            if read is not None:
                read.cancel()
                read.add_done_callback(_retrieve)
            call.cancel()

    async def _apply(self, assignment: Assignment, spread_s: float = 0.0) -> None:
        """Apply ``assignment``, then report: at once, or after a delay drawn from
        [0, ``spread_s``) when the gateway asks a fleet to spread its reports (one report
        waits at a time; it carries every outcome kept until it is sent)."""
        assert self.manager is not None
        outcomes = await self.manager.apply(assignment)
        log.info("assignment_applied", generation=assignment.generation,
                 replica=assignment.replica, outcomes=len(outcomes),
                 retry=self.manager.retry_wanted)
        if spread_s <= 0:
            await self._report_now()
        elif self._report_soon is None or self._report_soon.done():
            delay = float(self._rng.uniform(0.0, spread_s))
            self._report_soon = asyncio.create_task(self._report_after(delay),
                                                    name="fleet-report-soon")

    async def _report_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._report_now()

    async def _report_now(self) -> None:
        try:
            await self.report()
        except Exception as exc:  # a report that cannot be built must not drop the stream
            self._service.metrics.loop_error("fleet_report")
            log.exception("fleet_report_failed", error_type=type(exc).__name__)

    async def report(self) -> None:
        """Send one ReportStatus (outcomes not yet reported go with it)."""
        assert self.manager is not None
        if self.state == "denied":
            return  # refused for the same reason; the watch loop says why
        swaps = list(self.manager.outcomes)
        status = build_status(self.agent_id, self.labels, self._service, self.manager, swaps,
                              status_interval_s=self._status_interval_s)
        try:
            await self._stub.ReportStatus(status, timeout=5, metadata=self._auth)
        except grpc.aio.AioRpcError as exc:
            log.info("status_report_failed", code=exc.code().name)
            return
        del self.manager.outcomes[:len(swaps)]

    async def _report_loop(self) -> None:
        """Report every ``status_interval_s``; survives anything short of cancellation
        (after an error, the next report comes after a jittered, growing backoff)."""
        failures = 0
        while True:
            await asyncio.sleep(self._delay(failures - 1) if failures
                                else self._status_interval_s)
            try:
                await self.report()
            except Exception as exc:  # the loop outlives any bug or disk error
                failures += 1
                self._service.metrics.loop_error("fleet_report")
                log.exception("fleet_report_failed", error_type=type(exc).__name__,
                              failures=failures)
            else:
                failures = 0


def _retrieve(future: asyncio.Future) -> None:
    """Collect an abandoned read's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
