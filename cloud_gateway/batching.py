"""Per-model dynamic batching.

Requests queue with one future each. When a worker is free, the collector
takes what is queued (up to ``max_batch_size`` rows) and runs it on a worker
thread (ONNX Runtime releases the GIL), then splits the results back. A lone
request is never held: the collector waits for more (at most
``max_queue_delay_s``) only when a batch is already forming, i.e. it took
two requests or more, which means others arrive while workers are busy.

A request that finds the model idle (nothing queued, nothing running, and no run
ended in the last ``inline_gap_s``) runs at once on the event loop when the model's
recent runs say it takes less than ``inline_below_s``: a thread hand-off and the
collector's wake-up would cost more than the run itself. Anything slower, and
anything arriving while the model is busy, goes through the queue. The gap matters
under load: requests run inline one after another would look idle to each other
(each ends before the next is read) and never form a batch; a request arriving right
after a run ended is taken as a sign of load and queued, so batches form again.

Limits: a request larger than ``max_batch_size`` rows is split into parts of
at most that size (each queued and run like any other, answers joined back
in order); one larger than ``max_queue_rows`` could never be queued whole and
is refused with :class:`~core.errors.InvalidInput`. The queue is bounded in
rows: past ``max_queue_rows`` a request is refused with
:class:`~core.errors.Overloaded`. Requests whose deadline has passed are
dropped before compute.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog

from edgecloud.core.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable

log = structlog.get_logger("edgecloud.gateway.batching")

RunBatch = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
"""Runs one concatenated batch and returns outputs with the same row count."""
RunInline = Callable[[dict[str, np.ndarray], int, float],
                     "dict[str, np.ndarray] | None"]
"""``(inputs, rows, below_s)``: runs the model now, on the calling thread, when its
recent runs say ``rows`` rows take less than ``below_s``; None (nothing run) otherwise."""


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Limits of one model's batcher."""

    max_batch_size: int = 64
    """Most rows in one model run."""
    max_queue_delay_s: float = 0.002
    """Longest a forming batch (two requests or more) waits for others to join it; a
    lone request never waits."""
    max_queue_rows: int = 4096
    """Rows allowed to wait; more are refused with RESOURCE_EXHAUSTED."""
    workers: int = 2
    """Batches of this model that may run at the same time."""
    inline_below_s: float = 0.0005
    """A request finding the model idle runs on the event loop when its rows are expected
    to take less than this (0: never)."""
    inline_gap_s: float = 0.00025
    """The model counts as idle only when its last run ended at least this long ago."""


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    deadline: float | None
    future: asyncio.Future = field(repr=False)


def _batch_key(inputs: Mapping[str, np.ndarray]) -> tuple:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


class DynamicBatcher:
    """Collects requests for one model into batches."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        config: BatchingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, int], None] | None = None,
        run_inline: RunInline | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._run_inline = run_inline if config.inline_below_s > 0 else None
        self.config = config
        self._clock = clock
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._workers: asyncio.Semaphore | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False
        self._last_end = float("-inf")
        """When the last model run ended (this batcher's clock)."""

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch."""
        return self._queued_rows

    def start(self) -> None:
        """Start the collector; call inside the running loop."""
        self._wakeup = asyncio.Event()
        self._workers = asyncio.Semaphore(self.config.workers)
        self._collector = asyncio.create_task(self._collect(), name=f"batcher-{self.name}")

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Finish queued and running batches (up to ``grace_s``), then stop."""
        self._closed = True
        deadline = self._clock() + grace_s
        # Polling is fine here: it runs once, at shutdown, bounded by the grace.
        while (self._queue or self._running) and self._clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model {self.name} is shutting down"))
        self._queued_rows = 0

    async def submit(
        self, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue validated inputs and wait for their outputs.

        ``deadline`` is on this batcher's clock; a request still queued when
        it passes is answered with :class:`~core.errors.DeadlineExceeded`.
        """
        if self._closed or self._wakeup is None:
            raise Unavailable(f"model {self.name} is not accepting requests")
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        if rows > self.config.max_queue_rows:
            raise InvalidInput(
                f"request has {rows} rows; model {self.name} takes at most "
                f"{self.config.max_queue_rows} in one request"
            )
        # A zero-row request still takes a place in the queue (and a model run), so it
        # counts as one row against the limit: an empty request is never free.
        if self._queued_rows + max(rows, 1) > self.config.max_queue_rows and self._queue:
            raise Overloaded(
                f"model {self.name} queue is full ({self._queued_rows} rows waiting); retry later"
            )
        size = self.config.max_batch_size
        if rows <= size:
            if (self._run_inline is not None and not self._queue and not self._running
                    and self._clock() - self._last_end >= self.config.inline_gap_s):
                outputs = self._inline(inputs, rows, deadline)
                if outputs is not None:
                    return outputs
            return await self._enqueue(inputs, rows, deadline)
        parts = [self._enqueue({k: v[start:start + size] for k, v in inputs.items()},
                               min(size, rows - start), deadline)
                 for start in range(0, rows, size)]
        try:
            answers = await asyncio.gather(*parts)
        finally:
            for part in parts:  # one part failed or the caller left: drop the rest
                part.cancel()
        return {name: np.concatenate([a[name] for a in answers], axis=0)
                for name in answers[0]}

    def _inline(self, inputs: dict[str, np.ndarray], rows: int,
                deadline: float | None) -> dict[str, np.ndarray] | None:
        """Run a request that found the model idle now, if the model is fast enough."""
        assert self._run_inline is not None
        if deadline is not None and deadline <= self._clock():
            raise DeadlineExceeded(f"deadline passed before model {self.name} ran")
        outputs = self._run_inline(inputs, rows, self.config.inline_below_s)
        if outputs is not None:
            self._last_end = self._clock()
            if self._on_batch is not None:
                self._on_batch(rows, self._queued_rows)
        return outputs

    def _enqueue(self, inputs: dict[str, np.ndarray], rows: int,
                 deadline: float | None) -> asyncio.Future:
        assert self._wakeup is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, _batch_key(inputs), deadline, future))
        self._queued_rows += max(rows, 1)
        self._wakeup.set()
        return future

    async def _next_item(self, wait_s: float | None) -> _Pending | None:
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except TimeoutError:
                return None
        return self._queue[0]

    def _take(self) -> _Pending:
        item = self._queue.popleft()
        self._queued_rows -= max(item.rows, 1)
        return item

    async def _collect(self) -> None:
        assert self._workers is not None
        while True:
            await self._next_item(None)
            await self._workers.acquire()
            try:
                batch = await self._form_batch()
            except BaseException:
                self._workers.release()
                raise
            if not batch:
                self._workers.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _form_batch(self) -> list[_Pending]:
        first = self._take()
        batch = [first]
        rows = first.rows
        size = self.config.max_batch_size

        def fits(item: _Pending) -> bool:
            return item.key == first.key and rows + item.rows <= size

        while self._queue and rows < size and fits(self._queue[0]):
            batch.append(self._take())
            rows += batch[-1].rows
        if len(batch) > 1 and self.config.max_queue_delay_s > 0:
            # Others arrived while the workers were busy: a batch is forming, give it
            # up to the delay to fill.
            end = self._clock() + self.config.max_queue_delay_s
            while rows < size:
                remaining = end - self._clock()
                if remaining <= 0 and not self._queue:
                    break
                item = await self._next_item(max(remaining, 0.0))
                if item is None or not fits(item):
                    break
                batch.append(self._take())
                rows += item.rows
        now = self._clock()
        live = []
        for item in batch:
            if item.future.done():  # the caller went away
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(
                    DeadlineExceeded(f"deadline passed while queued for model {self.name}")
                )
                continue
            live.append(item)
        return live

    async def _run(self, batch: list[_Pending]) -> None:
        assert self._workers is not None
        try:
            if len(batch) == 1:
                merged = batch[0].inputs
            else:
                merged = {
                    name: np.concatenate([item.inputs[name] for item in batch], axis=0)
                    for name in batch[0].inputs
                }
            rows = sum(item.rows for item in batch)
            if self._on_batch is not None:
                self._on_batch(rows, self._queued_rows)
            try:
                outputs = await self._run_batch(merged)
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            finally:
                self._last_end = self._clock()
            start = 0
            for item in batch:
                stop = start + item.rows
                if not item.future.done():
                    item.future.set_result(
                        {name: value[start:stop] for name, value in outputs.items()}
                    )
                start = stop
        finally:
            self._workers.release()
