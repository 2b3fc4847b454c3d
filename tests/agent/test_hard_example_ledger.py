"""The agent's hard-example ledger on a real SQLite file: ids, bounds, quarantine, torn writes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.hard_examples import parse_record_id
from edgecloud.edge_agent.hard_examples import HardExampleLedger, HardRows, LedgerLimits
from edgecloud.router import REASONS, ROUTES, Reason, Route

AGENT = "cam-1"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hard_rows(n: int, *, width: int = 64, at: float = 1_700_000_000.0, seed: int = 0,
              cloud: bool = True) -> HardRows:
    """``n`` low-confidence rows of ``width`` float32 inputs, answered by the cloud or not."""
    rng = np.random.default_rng(seed)
    route = Route.CLOUD if cloud else Route.EDGE_FALLBACK
    reason = Reason.LOW_CONFIDENCE if cloud else Reason.CLOUD_FAILED
    return HardRows(
        task="digits", model_version="1", policy_version="3",
        inputs={"pixels": rng.random((n, width), dtype=np.float32)},
        edge_scores=rng.random((n, 10), dtype=np.float32),
        cloud_scores=rng.random((n, 10), dtype=np.float32) if cloud else None,
        cloud_answered=np.ones(n, dtype=bool) if cloud else None,
        route=np.full(n, ROUTES.index(route), dtype=np.uint8),
        reason=np.full(n, REASONS.index(reason), dtype=np.uint8),
        confidence=rng.random(n), cloud_model_version="7" if cloud else "", at=at,
    )


def open_ledger(path: Path, clock: Clock | None = None, **limits) -> HardExampleLedger:
    return HardExampleLedger(path / "ledger.sqlite3", AGENT, LedgerLimits(**limits),
                             clock=clock or Clock())


def test_records_keep_their_rows_and_get_stable_ids(tmp_path: Path) -> None:
    """Each row becomes one record with its inputs, both answers and the versions; ids are
    AGENT.SEQ.HASH, sequence numbers go on across a reopen and are never reused."""
    rows = hard_rows(3)
    ledger = open_ledger(tmp_path)
    ledger.add(rows)
    assert ledger.flush() == 3
    first = ledger.queued(10, 2**20)
    assert [k.seq for k in first] == [1, 2, 3]
    for j, kept in enumerate(first):
        assert parse_record_id(kept.record_id) == (AGENT, j + 1,
                                                   kept.example.content_hash()[:16])
        np.testing.assert_array_equal(kept.example.inputs[0].array(),
                                      rows.inputs["pixels"][j:j + 1])
        np.testing.assert_allclose(kept.example.edge_scores, rows.edge_scores[j])
        np.testing.assert_allclose(kept.example.cloud_scores, rows.cloud_scores[j])
        assert (kept.example.route, kept.example.reason) == ("cloud", "low_confidence")
        assert (kept.example.model_version, kept.example.policy_version,
                kept.example.cloud_model_version) == ("1", "3", "7")
    assert ledger.acknowledge([k.seq for k in first]) == 3
    ledger.close()

    again = open_ledger(tmp_path)
    again.add(hard_rows(3))  # the same content: new sequence numbers, new ids
    again.flush()
    second = again.queued(10, 2**20)
    assert [k.seq for k in second] == [4, 5, 6]
    assert {k.record_id for k in second}.isdisjoint(k.record_id for k in first)
    assert again.stats.kept == 6 and again.stats.uploaded == 3 and again.stats.queued == 3
    again.close()


def test_a_torn_last_write_is_skipped_not_fused(tmp_path: Path) -> None:
    """A ledger whose last write was cut short (the WAL's tail torn off) opens with every
    earlier record intact, without the torn one, and the next record stands alone."""
    live = tmp_path / "live"
    ledger = open_ledger(live)
    ledger.add(hard_rows(2, seed=1))
    ledger.flush()
    ledger.add(hard_rows(1, seed=2, width=4096))  # the write that will be torn
    ledger.flush()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal"):  # copied while open: a crash image
        shutil.copy(live / name, crashed / name)
    ledger.close()
    wal = crashed / "ledger.sqlite3-wal"
    wal.write_bytes(wal.read_bytes()[:-3000])

    reopened = open_ledger(crashed)
    assert [k.seq for k in reopened.queued(10, 2**24)] == [1, 2]
    assert reopened.stats.kept == 2
    reopened.add(hard_rows(1, seed=3))
    reopened.flush()
    kept = reopened.queued(10, 2**24)
    assert [k.seq for k in kept] == [1, 2, 3]
    assert kept[2].example.inputs[0].shape == (1, 64)
    with sqlite3.connect(crashed / "ledger.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reopened.close()


def test_bounded_by_age_and_bytes_oldest_first(tmp_path: Path) -> None:
    """Records past the age limit, then the oldest while over the byte limit, are evicted
    unsent; each eviction is counted and survives a reopen."""
    clock = Clock()
    ledger = open_ledger(tmp_path, clock, max_age_s=3600, max_bytes=64 * 1024)
    ledger.add(hard_rows(2, at=clock.now))
    ledger.flush()
    clock.now += 7200
    ledger.add(hard_rows(1, at=clock.now))
    ledger.flush()
    assert ledger.stats.evicted_age == 2
    assert [k.seq for k in ledger.queued(10, 2**20)] == [3]
    ledger.add(hard_rows(80, at=clock.now))  # ~1 KB each: over 64 KB in all
    ledger.flush()
    stats = ledger.stats
    assert stats.evicted_space > 0 and stats.queued == 81 - stats.evicted_space
    queued = ledger.queued(100, 2**24)
    assert queued[0].seq == 3 + stats.evicted_space and queued[-1].seq == 83
    assert stats.queued_bytes <= 64 * 1024
    ledger.close()
    assert open_ledger(tmp_path, clock).stats == stats


def test_a_record_over_the_upload_limit_is_quarantined_and_never_blocks(tmp_path: Path) -> None:
    """A record whose inputs exceed the upload limit is set aside on arrival and counted;
    the records after it are queued as usual."""
    ledger = open_ledger(tmp_path, max_record_bytes=1024)
    ledger.add(hard_rows(1, width=2048, seed=1))
    ledger.add(hard_rows(2, seed=2))
    ledger.flush()
    assert [k.seq for k in ledger.queued(10, 2**20)] == [2, 3]
    assert ledger.stats.quarantined == 1 and ledger.stats.queued == 2
    ledger.acknowledge((), {2: "refused"})
    assert [k.seq for k in ledger.queued(10, 2**20)] == [3]
    assert ledger.stats.quarantined == 2
    ledger.close()


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    """Rows that do not fit the memory buffer are dropped and counted, and the count is
    kept in the ledger by the next write."""
    ledger = open_ledger(tmp_path, max_buffered_bytes=65536)
    ledger.add(hard_rows(10, width=512))   # ~20 KB
    ledger.add(hard_rows(10, width=4096))  # ~160 KB: does not fit
    assert ledger.stats.dropped == 10
    ledger.flush()
    ledger.close()
    reopened = open_ledger(tmp_path)
    assert reopened.stats.dropped == 10 and reopened.stats.kept == 10
    reopened.close()


def test_batches_respect_the_byte_limit_but_always_carry_one(tmp_path: Path) -> None:
    """queued() stops before the byte limit, yet hands out a single record larger than it."""
    ledger = open_ledger(tmp_path)
    ledger.add(hard_rows(4, width=1024))
    ledger.flush()
    assert len(ledger.queued(10, 15_000)) == 2
    assert len(ledger.queued(10, 10)) == 1
    ledger.close()


def test_rows_of_the_former_spool_move_into_the_ledger(tmp_path: Path) -> None:
    """JSON lines left by an older agent are imported once (a torn last line skipped) and
    their files removed."""
    import base64

    row = np.arange(64, dtype="<f4").reshape(1, 64)
    line = json.dumps({"task": "digits", "model_version": "1",
                       "inputs": {"pixels": {"datatype": "FP32", "shape": [1, 64],
                                             "data": base64.b64encode(row.tobytes()).decode()}},
                       "edge_scores": [0.1] * 10, "cloud_scores": None, "route": "cloud",
                       "reason": "low_confidence", "confidence": 0.3,
                       "at": 1_700_000_000.0})
    (tmp_path / "uploading-1.jsonl").write_text(line + "\n" + line + "\n" + line[:40])
    ledger = open_ledger(tmp_path)
    kept = ledger.queued(10, 2**20)
    assert len(kept) == 2
    np.testing.assert_array_equal(kept[0].example.inputs[0].array(), row)
    assert not list(tmp_path.glob("*.jsonl"))
    ledger.close()


@pytest.mark.parametrize("garbage", [b"", b"not a database at all" * 100])
def test_a_damaged_ledger_is_moved_aside(tmp_path: Path, garbage: bytes) -> None:
    """A ledger file that is not a database is kept aside and a fresh ledger opens."""
    (tmp_path / "ledger.sqlite3").write_bytes(garbage)
    ledger = open_ledger(tmp_path)
    ledger.add(hard_rows(1))
    assert ledger.flush() == 1
    ledger.close()
    if garbage:
        assert list(tmp_path.glob("ledger.sqlite3.damaged-*"))


def test_an_agent_id_that_cannot_name_records_is_refused(tmp_path: Path) -> None:
    """An agent id outside AGENT_ID.SEQ.HASH's alphabet is refused at open, naming it,
    instead of every record being quarantined later."""
    from edgecloud.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="'cam 1'"):
        HardExampleLedger(tmp_path / "ledger.sqlite3", "cam 1")
