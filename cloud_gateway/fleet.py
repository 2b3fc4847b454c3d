"""The fleet control plane of one gateway replica.

A watcher polls the shared registry's generation; on every change it takes
a new snapshot, loads new cloud model versions (keeping the old one serving
until the new one is loaded and warmed up; a candidate answers only its share
of the requests), writes what the replica now serves into the registry (for
``models list``), and wakes every agent stream so each gets its new
assignment within a second.

A change reaches many streams cheaply: one wake-up per stream (no lock they
queue on), and each distinct assignment is built once per snapshot and shared
by every stream whose agent gets the same versions (most of a fleet), so a
stream's own work is choosing its versions. A stream holds no queue: it
always sends the assignment of the newest snapshot, so a slow agent skips the
generations it missed instead of piling them up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

from edgecloud.cloud_gateway.registry import REPLICA_HEARTBEAT_S, Envelope, Registry, Snapshot
from edgecloud.cloud_gateway.rollouts import (
    AgentAssignment,
    CloudServing,
    assignment_for,
    assignment_of,
    cloud_versions,
    desired_versions,
)
from edgecloud.cloud_gateway.serving import GatewayService
from edgecloud.core.artifacts import smoke_test
from edgecloud.core.errors import EdgecloudError, Unavailable
from edgecloud.core.model import OnnxModel

log = structlog.get_logger("edgecloud.gateway.fleet")

SWAP_HISTORY = 10
"""Swaps kept per agent in its stored status (newest last), failed ones included."""


def swap_history(previous: list[dict], reported: list[dict]) -> list[dict]:
    """The last :data:`SWAP_HISTORY` swaps: the stored ones, then the newly reported.

    A report whose acknowledgement was lost is sent again; its swaps are not counted twice.
    """
    def key(swap: dict) -> tuple:
        return tuple(swap.get(k) for k in ("name", "version", "kind", "ok", "at"))

    history = list(previous)
    seen = {key(swap) for swap in history}
    for swap in reported:
        if key(swap) not in seen:
            seen.add(key(swap))
            history.append(swap)
    history.sort(key=lambda swap: float(swap.get("at") or 0.0))
    return history[-SWAP_HISTORY:]


class Changes:
    """Wakes every waiter at once when something changes; keyed by a change counter.

    :meth:`wait` returns at once when the counter moved past the value the caller saw,
    else when :meth:`publish` moves it. Each waiter's future is added and dropped in O(1),
    so thousands of waiters coming and going cost nothing per change but their wake-up.
    """

    def __init__(self) -> None:
        self.seen = 0
        """The change counter (0 before the first change)."""
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, seen: int) -> int:
        """The counter once it differs from ``seen``."""
        if self.seen == seen:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)
        return self.seen

    def publish(self) -> None:
        """Move the counter on and wake every waiter."""
        self.seen += 1
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class FleetHub:
    """Assignments, artifact access, and agent reports for one replica."""

    def __init__(self, registry: Registry, replica: str, serving: GatewayService | None, *,
                 poll_s: float = 0.2, threads_for: Callable[[str], int] | None = None,
                 providers_for: Callable[[str], list[str]] | None = None,
                 clock: Callable[[], float] = time.time,
                 report_spread_per_agent_ms: float = 1.0,
                 report_spread_max_ms: int = 30_000) -> None:
        """``report_spread_per_agent_ms`` × the agents watching here (at most
        ``report_spread_max_ms``): how long agents spread the status reports that
        follow an assignment over (:meth:`report_spread_ms`)."""
        self.registry = registry
        self._spread_per_agent_ms = report_spread_per_agent_ms
        self._spread_max_ms = report_spread_max_ms
        self.replica = replica
        self._serving = serving
        self._poll_s = poll_s
        # Model name -> ONNX Runtime intra-op threads of its session (default: 1).
        self._threads_for = threads_for or (lambda name: 1)
        # Model name -> execution providers in order of preference (default: CPU alone).
        self._providers_for = providers_for or (lambda name: ["CPUExecutionProvider"])
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._shared: dict[tuple[str | None, ...], tuple[AgentAssignment, tuple]] = {}
        """The snapshot's assignments built so far, by versions, with their keys."""
        self._changes = Changes()
        self._watcher: asyncio.Task | None = None
        self._closed = False
        self._connected: dict[str, int] = {}
        self._loaded: dict[tuple[str, str, str], OnnxModel] = {}
        """Cloud models loaded from the registry, by (name, version, digest)."""
        self._failed: set[tuple[str, str, str]] = set()
        self._reported_at = 0.0
        self._labels: dict[str, dict[str, str]] = {}
        """Labels each agent last announced to this replica (hello or status report)."""

    @property
    def snapshot(self) -> Snapshot:
        """The registry as of the last generation seen."""
        if self._snapshot is None:
            raise Unavailable("fleet control plane is starting")
        return self._snapshot

    async def start(self) -> None:
        """Read the registry, load cloud models, start watching."""
        await self._refresh()
        self._watcher = asyncio.create_task(self._watch_generation(), name="fleet-watch")

    async def aclose(self) -> None:
        """Stop watching and end every agent stream."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._serving is not None:
            await asyncio.to_thread(self.registry.remove_replica_status, self.replica)
        self._changes.publish()

    async def _refresh(self) -> None:
        snapshot = await asyncio.to_thread(self.registry.snapshot)
        await self._load_cloud_models(snapshot)
        await self._report_serving()
        self._snapshot, self._shared = snapshot, {}
        self._changes.publish()
        log.info("registry_generation", generation=snapshot.generation, replica=self.replica)

    async def _watch_generation(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                generation = await asyncio.to_thread(self.registry.generation)
                if self._snapshot is None or generation != self._snapshot.generation:
                    await self._refresh()
                elif self._clock() - self._reported_at >= REPLICA_HEARTBEAT_S:
                    await self._report_serving()
            except Exception:
                log.exception("registry_watch_failed")

    async def _load_cloud_models(self, snapshot: Snapshot) -> None:
        if self._serving is None:
            return
        wanted = cloud_versions(snapshot)
        for name, serving in wanted.items():
            try:
                await self._serve_cloud_model(name, serving)
            except Exception:  # one bad artifact never blocks the others or the snapshot
                log.exception("cloud_model_skipped", model=name)
        keep = {_key(e) for s in wanted.values() for e in (s.stable, s.candidate) if e}
        self._loaded = {k: m for k, m in self._loaded.items() if k in keep}

    async def _serve_cloud_model(self, name: str, serving: CloudServing) -> None:
        assert self._serving is not None
        stable = await self._load(serving.stable, candidate=False)
        if stable is not None and self._serving_key(name) != _key(serving.stable):
            self._serving.add_model(stable)
        candidate = None
        if serving.candidate is not None:
            candidate = await self._load(serving.candidate, candidate=True)
        if candidate is not None and name in self._serving.model_names():
            self._serving.set_candidate(candidate, serving.percent)
        else:
            self._serving.drop_candidate(name)

    def _serving_key(self, name: str) -> tuple[str, str, str] | None:
        """Identity of the stable version served now (None for a model given at start)."""
        assert self._serving is not None
        served = self._serving.served_model(name)
        for key, model in self._loaded.items():
            if model is served:
                return key
        return None

    async def _load(self, envelope: Envelope, *, candidate: bool) -> OnnxModel | None:
        """The loaded and smoke-tested model of a registry version; None when it fails (a
        failing candidate counts against its rollout, as an agent's failed swap does)."""
        key = _key(envelope)
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            return None
        manifest = envelope.manifest
        try:
            path = self.registry.blob_path(manifest.digest)
            model = await asyncio.to_thread(
                OnnxModel.load, path, name=manifest.name, version=manifest.version,
                intra_op_threads=self._threads_for(manifest.name),
                providers=self._providers_for(manifest.name), spinning=False,
            )
            await asyncio.to_thread(smoke_test, model, manifest, require_sample=False)
        except Exception as exc:  # a bad artifact is skipped (and logged), never retried
            self._failed.add(key)
            message = exc.message if isinstance(exc, EdgecloudError) else repr(exc)
            log.error("cloud_model_load_failed", model=manifest.name, version=manifest.version,
                      error=message)
            if candidate:
                await asyncio.to_thread(self.registry.record_swap_failure, manifest.name,
                                        manifest.version, self.replica, message, "cloud")
            return None
        self._loaded[key] = model
        return model

    async def _report_serving(self) -> None:
        """Write what this replica serves into the registry, for ``models list``."""
        if self._serving is None:
            return
        self._reported_at = self._clock()
        status = {"replica": self.replica, "updated": self._reported_at,
                  "models": self._serving.serving()}
        try:
            await asyncio.to_thread(self.registry.write_replica_status, self.replica, status)
        except (OSError, EdgecloudError) as exc:
            log.warning("replica_status_not_written", replica=self.replica, error=str(exc))

    async def watch(self, agent_id: str, labels: Mapping[str, str]) -> AsyncIterator[
            AgentAssignment]:
        """The agent's assignment now, then again whenever it changes.

        Agents with the same versions get the same :class:`AgentAssignment` object while
        the snapshot lasts (callers may cache its encoding by identity).
        """
        self._connected[agent_id] = self._connected.get(agent_id, 0) + 1
        labels = self._labels[agent_id] = dict(labels)
        sent_key = None
        seen = -1
        try:
            while True:
                seen = await self._changes.wait(seen)
                if self._closed:
                    return
                assignment, key = self._assignment(agent_id, labels)
                if key != sent_key:
                    sent_key = key
                    yield assignment
        finally:
            self._connected[agent_id] -= 1
            if not self._connected[agent_id]:
                del self._connected[agent_id]

    def _assignment(self, agent_id: str,
                    labels: Mapping[str, str]) -> tuple[AgentAssignment, tuple]:
        """The agent's assignment in the current snapshot (shared), and its key."""
        snapshot = self.snapshot
        versions = desired_versions(snapshot, agent_id, labels)
        shared = self._shared.get(versions)
        if shared is None:
            assignment = assignment_of(snapshot, versions)
            shared = self._shared[versions] = (assignment, assignment.key())
        return shared

    def watching(self) -> int:
        """Assignment streams open on this replica."""
        return sum(self._connected.values())

    def report_spread_ms(self) -> int:
        """How long the agents should spread the status reports that follow an assignment
        over: each report costs this replica a few milliseconds of CPU, so a fleet
        reporting at once after a publication would keep it busy (and delay the next
        change's pushes); spread over about 1 ms per agent, the reports arrive at a rate
        it keeps up with."""
        return min(self._spread_max_ms, round(self._spread_per_agent_ms * self.watching()))

    def connected(self, agent_id: str) -> bool:
        """True while the agent holds a stream on this replica."""
        return agent_id in self._connected

    def labels_of(self, agent_id: str) -> dict[str, str] | None:
        """The labels the agent last announced to this replica; None when it has not."""
        return self._labels.get(agent_id)

    async def assigned(self, agent_id: str, labels: Mapping[str, str] | None,
                       digest: str) -> bool:
        """True when ``digest`` is one of the artifacts assigned to the agent.

        ``labels`` are the agent's (the ones it last announced here when None or
        empty). This replica may lag the one that sent the assignment by a poll
        interval, so a digest missing from its snapshot is looked up again in the
        registry as it is now, when the registry has moved on.
        """
        labels = labels or self._labels.get(agent_id) or {}
        if digest in assignment_for(self.snapshot, agent_id, labels).digests():
            return True
        generation = await asyncio.to_thread(self.registry.generation)
        if generation == self.snapshot.generation:
            return False
        snapshot = await asyncio.to_thread(self.registry.snapshot)
        return digest in assignment_for(snapshot, agent_id, labels).digests()

    async def report(self, status: dict, failed_swaps: list[tuple[str, str, str]]) -> None:
        """Count failed swaps against rollouts, then store the agent's status.

        In that order, so whoever reads a status sees its failures counted.
        """
        if isinstance(status.get("labels"), dict):
            self._labels[status["agent_id"]] = dict(status["labels"])
        status = {**status, "replica": self.replica, "last_seen": self._clock()}
        for name, version, reason in failed_swaps:
            rollout = await asyncio.to_thread(self.registry.record_swap_failure, name, version,
                                              status["agent_id"], reason)
            if rollout is not None and rollout.state == "halted":
                log.warning("rollout_halted", model=name, version=version,
                            failures=len(rollout.failures), stable=rollout.stable)
        await asyncio.to_thread(self._store_status, status)

    def _store_status(self, status: dict) -> None:
        """Add the swap history to the agent's status and store it (one worker-thread hop:
        read the stored status, write the new one)."""
        previous = self.registry.agent_status(status["agent_id"]) or {}
        status["swap_history"] = swap_history(previous.get("swap_history") or [],
                                              status.get("swaps") or [])
        self.registry.write_agent_status(status["agent_id"], status)


def _key(envelope: Envelope) -> tuple[str, str, str]:
    m = envelope.manifest
    return (m.name, m.version, m.digest)
