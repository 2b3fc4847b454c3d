"""The fleet control plane of one gateway replica.

A watcher polls the shared registry's generation; on every change it takes
a new snapshot, loads new cloud model versions (keeping the old one serving
until the new one is loaded and warmed up), and wakes every agent stream so
each gets its new assignment within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

from edgecloud.cloud_gateway.registry import Registry, Snapshot
from edgecloud.cloud_gateway.rollouts import AgentAssignment, assignment_for, cloud_versions
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


class FleetHub:
    """Assignments, artifact access, and agent reports for one replica."""

    def __init__(self, registry: Registry, replica: str, serving: GatewayService | None, *,
                 poll_s: float = 0.2, onnx_threads: int = 1,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.replica = replica
        self._serving = serving
        self._poll_s = poll_s
        self._onnx_threads = onnx_threads
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._changed: asyncio.Condition | None = None
        self._watcher: asyncio.Task | None = None
        self._closed = False
        self._connected: dict[str, int] = {}
        self._version = 0

    @property
    def snapshot(self) -> Snapshot:
        """The registry as of the last generation seen."""
        if self._snapshot is None:
            raise Unavailable("fleet control plane is starting")
        return self._snapshot

    async def start(self) -> None:
        """Read the registry, load cloud models, start watching."""
        self._changed = asyncio.Condition()
        await self._refresh()
        self._watcher = asyncio.create_task(self._watch_generation(), name="fleet-watch")

    async def aclose(self) -> None:
        """Stop watching and end every agent stream."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _refresh(self) -> None:
        snapshot = await asyncio.to_thread(self.registry.snapshot)
        await self._load_cloud_models(snapshot)
        self._snapshot = snapshot
        assert self._changed is not None
        async with self._changed:
            self._version += 1
            self._changed.notify_all()
        log.info("registry_generation", generation=snapshot.generation, replica=self.replica)

    async def _watch_generation(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                generation = await asyncio.to_thread(self.registry.generation)
                if self._snapshot is None or generation != self._snapshot.generation:
                    await self._refresh()
            except Exception:
                log.exception("registry_watch_failed")

    async def _load_cloud_models(self, snapshot: Snapshot) -> None:
        if self._serving is None:
            return
        for name, envelope in cloud_versions(snapshot).items():
            manifest = envelope.manifest
            if self._serving.served_version(name) == manifest.version:
                continue
            try:
                path = self.registry.blob_path(manifest.digest)
                model = await asyncio.to_thread(
                    OnnxModel.load, path, name=name, version=manifest.version,
                    intra_op_threads=self._onnx_threads,
                )
                await asyncio.to_thread(smoke_test, model, manifest, require_sample=False)
            except EdgecloudError as exc:
                log.error("cloud_model_load_failed", model=name, version=manifest.version,
                          error=exc.message)
                continue
            self._serving.add_model(model)

    async def watch(self, agent_id: str, labels: Mapping[str, str]) -> AsyncIterator[
            AgentAssignment]:
        """The agent's assignment now, then again whenever it changes."""
        assert self._changed is not None
        self._connected[agent_id] = self._connected.get(agent_id, 0) + 1
        sent_key = None
        seen = -1
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(
                        lambda seen=seen: self._version != seen or self._closed
                    )
                    seen = self._version
                if self._closed:
                    return
                assignment = assignment_for(self.snapshot, agent_id, labels)
                if assignment.key() != sent_key:
                    sent_key = assignment.key()
                    yield assignment
        finally:
            self._connected[agent_id] -= 1
            if not self._connected[agent_id]:
                del self._connected[agent_id]

    def connected(self, agent_id: str) -> bool:
        """True while the agent holds a stream on this replica."""
        return agent_id in self._connected

    async def report(self, status: dict, failed_swaps: list[tuple[str, str, str]]) -> None:
        """Count failed swaps against rollouts, then store the agent's status.

        In that order, so whoever reads a status sees its failures counted.
        """
        previous = await asyncio.to_thread(self.registry.agent_status, status["agent_id"])
        status = {**status, "replica": self.replica, "last_seen": self._clock(),
                  "swap_history": swap_history((previous or {}).get("swap_history") or [],
                                               status.get("swaps") or [])}
        for name, version, reason in failed_swaps:
            rollout = await asyncio.to_thread(self.registry.record_swap_failure, name, version,
                                              status["agent_id"], reason)
            if rollout is not None and rollout.state == "halted":
                log.warning("rollout_halted", model=name, version=version,
                            failures=len(rollout.failures), stable=rollout.stable)
        await asyncio.to_thread(self.registry.write_agent_status, status["agent_id"], status)
