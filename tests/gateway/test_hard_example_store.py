"""The gateway's hard-example store on a real directory: once per record id, checks, quota,
a few objects per upload (on S3 too: tests/gateway/test_registry_storage.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.storage import DirectoryStore
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
    """Storing the same records again counts them as duplicates and writes nothing; an
    upload is one object per task and its records read back as they were sent."""
    store = HardExampleStore(tmp_path)
    batch = [kept("cam-1", seq) for seq in (1, 2, 3)]
    first = store.store("cam-1", batch)
    assert (first.stored, first.duplicates, first.rejected) == (3, 0, ())
    again = store.store("cam-1", [*batch[1:], kept("cam-1", 4)])
    assert (again.stored, again.duplicates) == (1, 2)
    replay = store.store("cam-1", batch)
    assert (replay.stored, replay.duplicates) == (0, 3)
    assert len(list((tmp_path / "digits" / "cam-1").glob("*.jsonl"))) == 2
    assert list(store.records("digits")) == [*batch, kept("cam-1", 4)]


def test_records_that_are_not_what_they_claim_are_refused_alone(tmp_path: Path) -> None:
    """A record with another agent's id, a changed content, a bad task name, inputs over
    the limit or no time is refused with a reason; the good ones of the same upload are
    stored."""
    store = HardExampleStore(tmp_path, max_record_bytes=1024)
    good = kept("cam-1", 1)
    tampered = dataclasses.replace(kept("cam-1", 2),
                                   example=dataclasses.replace(example(2), confidence=0.9))
    batch = [good, kept("cam-2", 3), tampered, kept("cam-1", 4, task="../etc"),
             kept("cam-1", 5, width=512), kept("cam-1", 6, at=float("nan"))]
    outcome = store.store("cam-1", batch)
    assert outcome.stored == 1
    reasons = dict(outcome.rejected)
    assert set(reasons) == {k.record_id for k in batch[1:]}
    assert "not cam-1's" in reasons[batch[1].record_id]
    assert "content hash" in reasons[tampered.record_id]
    assert "task name" in reasons[batch[3].record_id]
    assert "1 to 1024 bytes" in reasons[batch[4].record_id]
    assert "not a finite number" in reasons[batch[5].record_id]
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
    whatever the folder they sit in; objects too old to hold one of them are not read."""
    objects = CountingStore(tmp_path)
    store = HardExampleStore(objects)
    store.store("cam-1", [kept("cam-1", seq, at=1000.0) for seq in (1, 2, 3)])
    store.store("cam-2", [kept("cam-2", seq, at=2000.0) for seq in (1, 2)])
    store.store("cam-1", [kept("cam-1", 4, task="other", at=3000.0)])
    newest = store.recent(3)
    assert [(k.agent_id, k.example.task, k.seq) for k in newest] == [
        ("cam-1", "other", 4), ("cam-2", "digits", 2), ("cam-2", "digits", 1)]
    assert not any("/cam-1/" in key and "digits" in key for key in objects.reads)
    assert len(store.recent(100)) == 6
    reads = len(objects.reads)
    assert len(store.recent(100)) == 6 and len(objects.reads) == reads  # read once
    assert store.recent(0) == [] and HardExampleStore(tmp_path / "none").recent(5) == []


class CountingStore(DirectoryStore):
    """A real directory store that counts the objects read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str):
        self.reads.append(key)
        return super().get(key)


def test_new_records_are_stored_without_reading_what_is_held(tmp_path: Path) -> None:
    """An upload of records newer than everything stored reads no stored object; only a
    resend reads the objects whose sequence ranges it overlaps."""
    objects = CountingStore(tmp_path)
    store = HardExampleStore(objects, REGISTRY_PREFIX)
    for first in range(1, 40, 3):
        store.store("cam-1", [kept("cam-1", seq) for seq in range(first, first + 3)])
    assert objects.reads == []
    outcome = store.store("cam-1", [kept("cam-1", seq) for seq in (20, 21, 41)])
    assert (outcome.stored, outcome.duplicates) == (1, 2)
    assert [key.rpartition("/")[2][:41] for key in objects.reads] == [
        f"{21:020d}-{19:020d}"]  # the one object holding 20 and 21
    assert len(objects.list(f"{REGISTRY_PREFIX}digits/cam-1/")) == 14


def test_one_object_per_task_and_the_quota_spans_tasks(tmp_path: Path) -> None:
    """An upload holding two tasks' records writes one object per task; a second replica
    on the same storage sums the agent's usage over both tasks for its quota."""
    store = HardExampleStore(tmp_path)
    records = [kept("cam-1", 1), kept("cam-1", 2, task="parts"), kept("cam-1", 3)]
    assert store.store("cam-1", records).stored == 3
    assert len(list(tmp_path.glob("*/cam-1/*.jsonl"))) == 2
    used = store.usage("cam-1")
    assert used == sum(p.stat().st_size for p in tmp_path.glob("*/cam-1/*.jsonl"))
    other = HardExampleStore(tmp_path, agent_quota_bytes=used + 10)
    assert other.usage("cam-1") == used
    with pytest.raises(Overloaded, match="quota"):
        other.store("cam-1", [kept("cam-1", 4, task="parts")])
    assert [k.seq for k in other.records("parts")] == [2]


def test_a_wiped_ledger_reusing_sequence_numbers_is_kept_apart(tmp_path: Path) -> None:
    """Records of a ledger that starts again at 1 (new content, so new ids) are stored,
    not taken for resends; export yields both generations."""
    store = HardExampleStore(tmp_path)
    old = [kept("cam-1", seq) for seq in (1, 2)]
    new = [kept("cam-1", seq, at=5000.0) for seq in (1, 2)]
    store.store("cam-1", old)
    assert store.store("cam-1", new).stored == 2
    assert sorted(k.record_id for k in store.records("digits")) == sorted(
        k.record_id for k in old + new)
    assert [k.seq for k in store.records("digits", since=4000.0)] == [1, 2]


def test_racing_replicas_storing_different_resends_export_each_record_once(
        tmp_path: Path) -> None:
    """Two replicas that each stored an overlapping resend before seeing the other's
    object hold some records twice; export still yields every record once, by sequence."""
    records = [kept("cam-1", seq) for seq in range(1, 6)]
    a, b = HardExampleStore(tmp_path / "a"), HardExampleStore(tmp_path / "b")
    a.store("cam-1", records[:4])
    b.store("cam-1", records[1:])
    for path in (tmp_path / "b" / "digits" / "cam-1").iterdir():
        path.rename(tmp_path / "a" / "digits" / "cam-1" / path.name)
    assert sum(1 for path in (tmp_path / "a").rglob("*.jsonl")
               for _ in path.read_text().splitlines()) == 8
    assert list(a.records("digits")) == records


def test_records_of_earlier_gateways_are_exported_and_not_stored_again(
        tmp_path: Path) -> None:
    """A record an earlier gateway kept as its own file is exported and counts as held when
    resent; lines of the oldest layout (no ids) are exported last."""
    first, second = kept("cam-1", 1), kept("cam-1", 2)
    folder = tmp_path / "digits" / "cam-1"
    folder.mkdir(parents=True)
    digest = first.record_id.rpartition(".")[2]
    (folder / f"{1:020d}.{digest}.json").write_text(json.dumps(first.to_dict()))
    oldest = {**example(7).to_dict(), "agent_id": "cam-0"}
    oldest["inputs"] = {i.pop("name"): i for i in oldest["inputs"]}
    (tmp_path / "digits" / "2024-01-01.jsonl").write_text(json.dumps(oldest) + "\n")
    store = HardExampleStore(tmp_path)
    outcome = store.store("cam-1", [first, second])
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    exported = list(store.records("digits"))
    assert exported[:2] == [first, second]
    assert exported[2].agent_id == "cam-0" and exported[2].example == example(7)
