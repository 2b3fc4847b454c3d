"""The dynamic batcher: batches form, results split back, deadlines and overload."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edgecloud.cloud_gateway.batching import BatchingConfig, DynamicBatcher
from edgecloud.core.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable


class RecordingModel:
    """A fake model run: doubles its input and records every batch size."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.entered = asyncio.Event()

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        x = inputs["x"]
        self.batches.append(int(x.shape[0]))
        return {"y": x * 2.0}


async def wait_for_queue(batcher: DynamicBatcher, rows: int) -> None:
    """Yield to the loop until ``rows`` rows wait in the batcher (no fixed sleeps)."""
    # The batcher has no queue-change event to wait on; yielding once per turn is enough.
    while batcher.queued_rows < rows:  # noqa: ASYNC110
        await asyncio.sleep(0)


async def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    """Requests that arrive together run as one batch; each gets back its own rows."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=64,
                                                        max_queue_delay_s=0.05, workers=1))
    batcher.start()
    try:
        inputs = [np.full((i + 1, 3), float(i), np.float32) for i in range(8)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs))
    finally:
        await batcher.aclose()
    for x, out in zip(inputs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2.0)
    assert sum(model.batches) == sum(range(1, 9))
    assert max(model.batches) > 1


async def test_batch_never_exceeds_max_rows() -> None:
    """No model run gets more rows than max_batch_size."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=4,
                                                        max_queue_delay_s=0.02, workers=1))
    batcher.start()
    try:
        await asyncio.gather(*(batcher.submit({"x": np.ones((1, 2), np.float32)})
                               for _ in range(10)))
    finally:
        await batcher.aclose()
    assert max(model.batches) <= 4
    assert sum(model.batches) == 10


async def test_different_trailing_shapes_are_not_mixed() -> None:
    """Requests whose non-batch shapes differ run in separate batches."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_queue_delay_s=0.02, workers=1))
    batcher.start()
    try:
        a, b = await asyncio.gather(batcher.submit({"x": np.ones((2, 3), np.float32)}),
                                    batcher.submit({"x": np.ones((2, 5), np.float32)}))
    finally:
        await batcher.aclose()
    assert a["y"].shape == (2, 3) and b["y"].shape == (2, 5)
    assert sorted(model.batches) == [2, 2]


async def test_full_queue_sheds_with_overloaded() -> None:
    """Past max_queue_rows waiting, a request is refused with Overloaded."""
    gate = asyncio.Event()
    model = RecordingModel(gate)
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=1, max_queue_rows=2,
                                                        max_queue_delay_s=0.0, workers=1))
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}))
        await model.entered.wait()  # the first is now running, held by the gate
        queued = [asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}))
                  for _ in range(2)]
        await wait_for_queue(batcher, 2)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit({"x": np.ones((1, 1), np.float32)})
        gate.set()
        await asyncio.gather(first, *queued)
    finally:
        gate.set()
        await batcher.aclose()


async def test_expired_deadline_is_dropped_before_compute() -> None:
    """A request whose deadline passed while queued never reaches the model."""
    now = [100.0]
    gate = asyncio.Event()
    model = RecordingModel(gate)
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=1,
                                                        max_queue_delay_s=0.0, workers=1),
                             clock=lambda: now[0])
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}))
        await model.entered.wait()
        late = asyncio.create_task(
            batcher.submit({"x": np.full((3, 1), 7.0, np.float32)}, deadline=101.0)
        )
        await wait_for_queue(batcher, 3)
        now[0] = 102.0  # the deadline passes while the first batch holds the worker
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
    finally:
        gate.set()
        await batcher.aclose()
    assert model.batches == [1]


async def test_closed_batcher_refuses_new_work() -> None:
    """After aclose, submit raises Unavailable instead of hanging."""
    batcher = DynamicBatcher("m", RecordingModel(), BatchingConfig())
    batcher.start()
    await batcher.aclose()
    with pytest.raises(Unavailable):
        await batcher.submit({"x": np.ones((1, 1), np.float32)})


async def test_model_failure_reaches_every_caller_in_the_batch() -> None:
    """When the model run fails, each request of that batch gets the error."""

    async def broken(inputs):
        raise RuntimeError("boom")

    batcher = DynamicBatcher("m", broken, BatchingConfig(max_queue_delay_s=0.02))
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.submit({"x": np.ones((1, 1), np.float32)}) for _ in range(3)),
            return_exceptions=True,
        )
    finally:
        await batcher.aclose()
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_lone_request_is_not_held_for_the_queue_delay() -> None:
    """A request alone in the queue runs at once, whatever the queue delay."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_queue_delay_s=3600.0))
    batcher.start()
    try:
        async with asyncio.timeout(60):  # a hang guard, far below the hour-long delay
            out = await batcher.submit({"x": np.ones((1, 2), np.float32)})
    finally:
        await batcher.aclose()
    np.testing.assert_array_equal(out["y"], np.full((1, 2), 2.0, np.float32))
    assert model.batches == [1]


async def test_request_larger_than_max_batch_size_is_split() -> None:
    """A request of more rows than max_batch_size runs in parts of at most that size."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0,
                                                        workers=1))
    batcher.start()
    try:
        x = np.arange(20, dtype=np.float32).reshape(10, 2)
        out = await batcher.submit({"x": x})
    finally:
        await batcher.aclose()
    np.testing.assert_array_equal(out["y"], x * 2.0)
    assert model.batches == [4, 4, 2]


async def test_request_larger_than_the_queue_is_refused() -> None:
    """A request that could never fit in the queue is refused, even when the queue is empty."""
    model = RecordingModel()
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=4, max_queue_rows=8))
    batcher.start()
    try:
        with pytest.raises(InvalidInput, match="at most 8"):
            await batcher.submit({"x": np.ones((9, 1), np.float32)})
    finally:
        await batcher.aclose()
    assert model.batches == []


async def test_zero_row_requests_count_against_the_queue() -> None:
    """Empty requests take a place in the queue: past max_queue_rows they are shed too."""
    gate = asyncio.Event()
    model = RecordingModel(gate)
    batcher = DynamicBatcher("m", model, BatchingConfig(max_batch_size=1, max_queue_rows=2,
                                                        max_queue_delay_s=0.0, workers=1))
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}))
        await model.entered.wait()
        empty = np.ones((0, 1), np.float32)
        queued = [asyncio.create_task(batcher.submit({"x": empty})) for _ in range(2)]
        await wait_for_queue(batcher, 2)
        with pytest.raises(Overloaded):
            await batcher.submit({"x": empty})
        gate.set()
        await asyncio.gather(first, *queued)
    finally:
        gate.set()
        await batcher.aclose()


class InlineModel:
    """A model that may run inline: says whether it would (``fast``) and records where each
    request ran."""

    def __init__(self, fast: bool) -> None:
        self.fast = fast
        self.inline: list[int] = []
        self.below: list[float] = []

    def __call__(self, inputs: dict[str, np.ndarray], rows: int,
                 below_s: float) -> dict[str, np.ndarray] | None:
        self.below.append(below_s)
        if not self.fast:
            return None
        self.inline.append(rows)
        return {"y": inputs["x"] * 2.0}


async def test_a_request_finding_a_fast_model_idle_runs_inline() -> None:
    """Nothing queued, nothing running, no run just ended, a model whose runs are cheap: the
    request runs at once, without the queue (the threshold asked is the configured one)."""
    now = [100.0]
    queued, inline = RecordingModel(), InlineModel(fast=True)
    batcher = DynamicBatcher("m", queued, BatchingConfig(inline_below_s=0.001,
                                                         inline_gap_s=0.01),
                             clock=lambda: now[0], run_inline=inline)
    batcher.start()
    try:
        for rows in (1, 3):
            now[0] += 0.01
            x = np.full((rows, 2), 1.5, np.float32)
            out = await batcher.submit({"x": x})
            np.testing.assert_array_equal(out["y"], x * 2.0)
        # One arriving right after a run ended is a sign of load: it is queued, so that
        # requests arriving together form batches instead of running one by one.
        await batcher.submit({"x": np.ones((2, 2), np.float32)})
    finally:
        await batcher.aclose()
    assert inline.inline == [1, 3] and queued.batches == [2]
    assert inline.below == [0.001, 0.001]


async def test_a_slow_model_or_a_busy_one_goes_through_the_queue() -> None:
    """A model too slow to run inline is queued; while a batch runs, a new request is
    queued without asking the model (it would wait behind the running batch)."""
    gate = asyncio.Event()
    queued, slow = RecordingModel(gate), InlineModel(fast=False)
    batcher = DynamicBatcher("m", queued, BatchingConfig(workers=1, max_queue_delay_s=0),
                             run_inline=slow)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}))
        await queued.entered.wait()  # the first batch is running (held by the gate)
        assert len(slow.below) == 1  # asked once, when the model was idle
        second = asyncio.create_task(batcher.submit({"x": np.ones((2, 2), np.float32)}))
        await wait_for_queue(batcher, 2)
        assert len(slow.below) == 1  # busy: not asked again
        gate.set()
        await asyncio.gather(first, second)
    finally:
        await batcher.aclose()
    assert queued.batches == [1, 2] and slow.inline == []


async def test_inline_runs_keep_deadlines_and_can_be_turned_off() -> None:
    """A passed deadline is refused before an inline run; inline_below_s=0 never runs
    inline."""
    now = [100.0]
    inline = InlineModel(fast=True)
    batcher = DynamicBatcher("m", RecordingModel(), BatchingConfig(), clock=lambda: now[0],
                             run_inline=inline)
    batcher.start()
    try:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit({"x": np.ones((1, 2), np.float32)}, deadline=99.0)
    finally:
        await batcher.aclose()
    assert inline.inline == []
    queued, off = RecordingModel(), InlineModel(fast=True)
    batcher = DynamicBatcher("m", queued, BatchingConfig(inline_below_s=0), run_inline=off)
    batcher.start()
    try:
        await batcher.submit({"x": np.ones((1, 2), np.float32)})
    finally:
        await batcher.aclose()
    assert off.below == [] and queued.batches == [1]
