"""The review queue on a real directory store: queued once, labelled once, expiry."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgecloud.cloud_gateway.review import ReviewQueue
from edgecloud.cloud_gateway.storage import DirectoryStore
from edgecloud.core.errors import FailedPrecondition, InvalidInput, NotFound
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample


class Clock:
    """A settable clock (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def kept(seq: int, at: float, reason: str = "review") -> KeptExample:
    example = HardExample("digits", "1", "1",
                          (InputRow.of("pixels", np.full((1, 64), seq, np.float32)),),
                          (0.1,) * 10, (0.2,) * 10, "1", "cloud", reason, 0.1, at,
                          answer_id=f"{seq:032x}", answer_row=0)
    return KeptExample.new("agent-0", seq, example)


def test_rows_are_queued_once_oldest_first_and_labelled_once(tmp_path):
    """Only review rows are queued, a resend once; the queue is oldest first; a label
    leaves the row out of the queue; a second label, even racing, is refused and the first
    one stands."""
    clock = Clock(1000.0)
    queue = ReviewQueue(DirectoryStore(tmp_path), max_age_s=600.0, clock=clock)
    rows = [kept(1, 950.0), kept(2, 900.0), kept(3, 990.0, reason="low_confidence")]
    assert queue.enqueue(rows) == 2
    assert queue.enqueue(rows) == 0
    waiting, count = queue.pending()
    assert [r.kept.seq for r in waiting] == [2, 1] and count == 2
    results: list[object] = []

    def label(value: int) -> None:
        try:
            results.append(queue.label(rows[1].record_id, value, f"r{value}"))
        except FailedPrecondition as exc:
            results.append(exc)

    threads = [threading.Thread(target=label, args=(v,)) for v in (4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, FailedPrecondition) for r in results) == 1
    (given,) = [r for r in results if not isinstance(r, FailedPrecondition)]
    assert ReviewQueue(DirectoryStore(tmp_path)).labels("agent-0") == [given]
    assert [r.kept.seq for r in queue.pending()[0]] == [1]


def test_expired_unknown_and_out_of_range_labels_are_refused(tmp_path):
    """A row past the review age leaves the queue and its label is FAILED_PRECONDITION;
    an unknown row is NOT_FOUND; a class outside the task's is INVALID_ARGUMENT; nothing is
    stored for any of them."""
    clock = Clock(1000.0)
    queue = ReviewQueue(DirectoryStore(tmp_path), max_age_s=60.0, clock=clock)
    old, new = kept(1, 930.0), kept(2, 990.0)
    queue.enqueue([old, new])
    assert [r.kept.seq for r in queue.pending()[0]] == [2]
    with pytest.raises(FailedPrecondition, match="expired"):
        queue.label(old.record_id, 1, "rita")
    with pytest.raises(NotFound):
        queue.label("agent-0.7.0123456789abcdef", 1, "rita")
    for label in (10, -1):
        with pytest.raises(InvalidInput, match="not a class"):
            queue.label(new.record_id, label, "rita")
    assert queue.all_labels() == {}
