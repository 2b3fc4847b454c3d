"""Uploads the hard-example ledger to the gateway with UploadHardExamples.

Every ``interval_s`` (at once when rows for the human review queue arrive, so
a reviewer sees them within moments) the uploader sends the ledger's queue, oldest first, in
batches (at most ``batch_records`` records and ``batch_bytes`` bytes each).
A batch is forgotten only once the gateway acknowledged it; records the
gateway refused (listed in the acknowledgement) are quarantined. Because the
gateway stores by record id, a batch sent again (after a lost
acknowledgement, or a SIGKILL of either side) is stored once.

A batch the gateway refuses as a whole with ``INVALID_ARGUMENT`` (its limits
are smaller than ours) is split in halves; a single record refused that way
is quarantined, so no record can block the queue. Any other failure leaves
the queue as it is for the next round, after a backoff with jitter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import structlog

from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import EdgecloudError, InvalidInput
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.hard_example_codec import example_to_pb
from edgecloud.core.hard_examples import KeptExample
from edgecloud.core.tls import open_channel
from edgecloud.edge_agent.hard_examples import HardExampleLedger
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.agent.hard")

UPLOAD_TIMEOUT_S = 60.0
"""Deadline of one batch's upload."""


class HardExampleUploader:
    """Sends the ledger's queue to the gateway in acknowledged batches."""

    def __init__(
        self,
        target: str,
        ledger: HardExampleLedger,
        *,
        interval_s: float = 2.0,
        batch_records: int = 256,
        batch_bytes: int = 8 * 2**20,
        backoff_max_s: float = 30.0,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._ledger = ledger
        self._interval_s = interval_s
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._backoff_max_s = backoff_max_s
        self._auth = call_metadata(token)
        self._rng = rng or np.random.default_rng()
        self._channel = open_channel(target, credentials,
                                     options=[("grpc.initial_reconnect_backoff_ms", 200),
                                              ("grpc.max_reconnect_backoff_ms", 5000)])
        self._stub = pb_grpc.FleetServiceStub(self._channel)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Upload every ``interval_s`` (inside the running loop)."""
        self._task = asyncio.create_task(self._loop(), name="hard-examples-upload")

    async def aclose(self) -> None:
        """Stop uploading and close the channel (the queue stays in the ledger)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._channel.close()

    async def _loop(self) -> None:
        failures = 0
        while True:
            delay = self._interval_s
            if failures:
                delay = max(delay, min(self._backoff_max_s, self._interval_s * 2 ** failures))
                delay *= float(self._rng.uniform(0.5, 1.5))
            if failures:
                await asyncio.sleep(delay)
            else:  # rows a reviewer waits for go at once, the rest every interval
                await self._ledger.wait_urgent(delay)
            try:
                await self.upload()
                failures = 0
            except EdgecloudError as exc:
                failures = min(failures + 1, 16)
                log.info("hard_examples_upload_failed", kind=exc.kind.value, error=exc.message)
            except Exception:
                failures = min(failures + 1, 16)
                log.exception("hard_examples_upload_crashed")

    async def upload(self) -> int:
        """Write the ledger's buffer, then send its queue until it is empty.

        Returns the records the gateway acknowledged; raises the domain error
        of a failed call (the batch stays queued).
        """
        async with self._lock:
            await self._ledger.flush_async()
            limit = self._batch_records
            acknowledged = 0
            while self._ledger.stats.queued:
                batch = await self._ledger.queued_async(limit, self._batch_bytes)
                if not batch:
                    break
                try:
                    ack = await self._send(batch)
                except InvalidInput as exc:
                    if len(batch) == 1:
                        await self._ledger.acknowledge_async((), {batch[0].seq: exc.message})
                    else:
                        limit = max(1, len(batch) // 2)
                    continue
                refused = {r.record_id: r.reason or "refused by the gateway"
                           for r in ack.rejected}
                acknowledged += await self._ledger.acknowledge_async(
                    [k.seq for k in batch if k.record_id not in refused],
                    {k.seq: refused[k.record_id] for k in batch if k.record_id in refused},
                )
                if ack.duplicates:
                    log.info("hard_examples_resent", duplicates=ack.duplicates)
            if acknowledged:
                log.info("hard_examples_uploaded", count=acknowledged)
            return acknowledged

    async def _send(self, batch: list[KeptExample]) -> pb.HardExampleAck:
        def messages() -> Iterator[pb.HardExample]:
            for kept in batch:
                yield example_to_pb(kept)

        try:
            return await self._stub.UploadHardExamples(messages(), timeout=UPLOAD_TIMEOUT_S,
                                                       metadata=self._auth)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None
