"""The gateway's hard-example store on a real directory: once per record id, checks, quota."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.core.errors import Overloaded
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample


def example(i: int, *, width: int = 64, task: str = "digits", at: float = 1000.0
            ) -> HardExample:
    row = np.full((1, width), i, dtype=np.float32)
    return HardExample(task=task, model_version="1", policy_version="1",
                       inputs=(InputRow.of("pixels", row),), edge_scores=(0.5, 0.25),
                       cloud_scores=None, cloud_model_version="", route="edge",
                       reason="cloud_unavailable", confidence=0.25, at=at + i)


def kept(agent: str, seq: int, **fields) -> KeptExample:
    return KeptExample.new(agent, seq, example(seq, **fields))


def test_a_resent_record_is_stored_once(tmp_path: Path) -> None:
    """Storing the same records again counts them as duplicates and writes nothing; each
    record is one file and reads back as it was sent."""
    store = HardExampleStore(tmp_path)
    batch = [kept("cam-1", seq) for seq in (1, 2, 3)]
    first = store.store("cam-1", batch)
    assert (first.stored, first.duplicates, first.rejected) == (3, 0, ())
    again = store.store("cam-1", [*batch[1:], kept("cam-1", 4)])
    assert (again.stored, again.duplicates) == (1, 2)
    assert len(list(tmp_path.rglob("*.json"))) == 4
    assert list(store.records("digits")) == [*batch, kept("cam-1", 4)]


def test_records_that_are_not_what_they_claim_are_refused_alone(tmp_path: Path) -> None:
    """A record with another agent's id, a changed content, a bad task name or inputs over
    the limit is refused with a reason; the good ones of the same upload are stored."""
    store = HardExampleStore(tmp_path, max_record_bytes=1024)
    good = kept("cam-1", 1)
    tampered = dataclasses.replace(kept("cam-1", 2),
                                   example=dataclasses.replace(example(2), confidence=0.9))
    batch = [good, kept("cam-2", 3), tampered, kept("cam-1", 4, task="../etc"),
             kept("cam-1", 5, width=512)]
    outcome = store.store("cam-1", batch)
    assert outcome.stored == 1
    reasons = dict(outcome.rejected)
    assert set(reasons) == {k.record_id for k in batch[1:]}
    assert "not cam-1's" in reasons[batch[1].record_id]
    assert "content hash" in reasons[tampered.record_id]
    assert "task name" in reasons[batch[3].record_id]
    assert "1 to 1024 bytes" in reasons[batch[4].record_id]
    assert [k.record_id for k in store.records("digits")] == [good.record_id]


def test_an_agent_past_its_quota_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """An upload that would take an agent past its disk quota raises Overloaded and writes
    nothing; other agents are unaffected."""
    store = HardExampleStore(tmp_path, agent_quota_bytes=2000)
    store.store("cam-1", [kept("cam-1", 1)])
    with pytest.raises(Overloaded, match="quota"):
        store.store("cam-1", [kept("cam-1", seq) for seq in range(2, 6)])
    assert [k.seq for k in store.records("digits")] == [1]
    assert store.store("cam-2", [kept("cam-2", 1)]).stored == 1


def test_records_since_a_time(tmp_path: Path) -> None:
    """records(task, since) yields only records kept at or after ``since``."""
    store = HardExampleStore(tmp_path)
    store.store("cam-1", [kept("cam-1", seq) for seq in range(1, 6)])
    assert [k.seq for k in store.records("digits", since=1003.0)] == [3, 4, 5]
    assert list(store.records("other")) == []


def test_recent_gives_the_newest_records_of_every_task_and_agent(tmp_path: Path) -> None:
    """The newest records across tasks and agents come first, at most ``limit`` of them,
    whatever the folder they sit in."""
    store = HardExampleStore(tmp_path)
    store.store("cam-1", [kept("cam-1", seq, at=1000.0) for seq in (1, 2, 3)])
    store.store("cam-2", [kept("cam-2", seq, at=2000.0) for seq in (1, 2)])
    store.store("cam-1", [kept("cam-1", 4, task="other", at=3000.0)])
    newest = store.recent(3)
    assert [(k.agent_id, k.example.task, k.seq) for k in newest] == [
        ("cam-1", "other", 4), ("cam-2", "digits", 2), ("cam-2", "digits", 1)]
    assert len(store.recent(100)) == 6
    assert store.recent(0) == [] and HardExampleStore(tmp_path / "none").recent(5) == []
