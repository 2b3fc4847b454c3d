"""Reviewers' labels, from the gateway to the answers apps wait on.

The agent holds one ``WatchLabels`` stream: the gateway sends the labels of
this agent's rows given since the cursor, then each new one. A label that
names a better answer (the app asked for one) is written to the answer store
(:meth:`AnswerStore.set_row_label`), so the app's Get, Watch or stream gets it
with source ``reviewer``. The cursor is the newest label time seen less
:data:`RESUME_OVERLAP_S` (labels are stamped by whichever replica took them,
whose clocks may differ a little): a reconnect asks for a little more than it
needs, and a label seen twice is applied once. A fresh agent starts from 0:
the gateway keeps labels only for its review age, and labels of answers the
agent no longer keeps are skipped.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import structlog

from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import EdgecloudError
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.tls import open_channel
from edgecloud.edge_agent.answers import AnswerStore
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.agent.labels")

RESUME_OVERLAP_S = 300.0
"""Seconds before the newest label seen that a reconnect asks from."""


class LabelWatcher:
    """Applies the gateway's labels of this agent's rows to its better answers."""

    def __init__(self, target: str, agent_id: str, answers: AnswerStore, *,
                 token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 backoff_max_s: float = 30.0,
                 rng: np.random.Generator | None = None) -> None:
        self._agent_id = agent_id
        self._answers = answers
        self._auth = call_metadata(token)
        self._backoff_max_s = backoff_max_s
        self._rng = rng or np.random.default_rng()
        self._channel = open_channel(target, credentials,
                                     options=[("grpc.initial_reconnect_backoff_ms", 200),
                                              ("grpc.max_reconnect_backoff_ms", 5000)])
        self._stub = pb_grpc.FleetServiceStub(self._channel)
        self._newest = 0.0
        self._task: asyncio.Task | None = None
        self.applied = 0
        """Labels written to answers (for status and tests)."""

    def start(self) -> None:
        """Hold the stream (inside the running loop), reconnecting with backoff."""
        self._task = asyncio.create_task(self._loop(), name="labels-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._channel.close()

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                await self._watch()
                failures = 0
            except EdgecloudError as exc:
                failures = min(failures + 1, 16)
                log.info("labels_watch_failed", kind=exc.kind.value, error=exc.message)
            except Exception:
                failures = min(failures + 1, 16)
                log.exception("labels_watch_crashed")
            delay = min(self._backoff_max_s, 0.5 * 2 ** failures)
            await asyncio.sleep(delay * float(self._rng.uniform(0.5, 1.5)))

    async def _watch(self) -> None:
        after = max(0.0, self._newest - RESUME_OVERLAP_S) if self._newest else 0.0
        call = self._stub.WatchLabels(pb.WatchLabelsRequest(agent_id=self._agent_id,
                                                            after=after),
                                      metadata=self._auth)
        try:
            async for label in call:
                await self._apply(label)
                self._newest = max(self._newest, label.labelled_at)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None

    async def _apply(self, label: pb.ReviewLabel) -> None:
        if not label.answer_id:
            return
        try:
            done = await self._answers.set_row_label(label.answer_id, label.answer_row,
                                                     label.label, label.reviewer,
                                                     label.labelled_at)
        except EdgecloudError as exc:  # the answer expired, or was never kept here
            log.info("label_not_applied", answer_id=label.answer_id, error=exc.message)
            return
        if done is not None:
            self.applied += 1
            log.info("label_applied", answer_id=label.answer_id, row=label.answer_row,
                     label=label.label, reviewer=label.reviewer)
