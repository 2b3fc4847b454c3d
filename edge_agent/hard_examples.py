"""The agent's hard-example ledger: rows the router marked hard, kept until the gateway has them.

On the request path, :meth:`HardExampleLedger.add` appends one
:class:`HardRows` (the hard rows of one request, copied out of it) to a list
in memory: no I/O, no encoding. A flush task writes that list to the ledger
every ``flush_interval_s`` from a worker thread, and :meth:`~HardExampleLedger.aclose`
writes what is left, so a SIGTERM drain keeps every row that reached the
buffer. The uploader (``grpc/examples_client.py``) reads the queue oldest
first, and a record leaves the ledger only once the gateway acknowledged it.

Why SQLite in WAL mode (the standard library's ``sqlite3``) and not an
append-only log of our own: a record is committed whole or not at all; WAL
frames carry checksums, so a write torn by SIGKILL or power loss is detected
and rolled back when the ledger reopens, never fused with the next record;
acknowledging a batch, evicting the oldest records and updating the counters
are each one transaction; and ``synchronous=FULL`` makes a commit durable
when it returns, at one fsync per flush rather than per row. A log of our
own would need its own framing, checksums, compaction of acknowledged records
and an index for deletions to give the same guarantees.

Each record gets the next sequence number (``AUTOINCREMENT``: never reused,
even after deletions) and its id, ``AGENT_ID.SEQ.HASH``
(:mod:`core.hard_examples`). The ledger is bounded by bytes (``max_bytes``)
and by age (``max_age_s``): past either, the oldest records go first, and
each eviction is counted (``evicted_space``, ``evicted_age``). A record
whose inputs exceed the upload limit (``max_record_bytes``) is quarantined on
arrival: counted, kept aside and never sent, so it cannot block the queue;
records the gateway refuses are quarantined the same way. The counters live
in the ledger too, so they survive restarts and go into every status report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog

from edgecloud.core.errors import InvalidInput
from edgecloud.core.hard_examples import (
    AGENT_ID_RE,
    HardExample,
    InputRow,
    KeptExample,
    float32_values,
    parse_record_id,
)
from edgecloud.router import REASONS, REVIEW, ROUTES

log = structlog.get_logger("edgecloud.agent.hard")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    at REAL NOT NULL,
    size INTEGER NOT NULL,
    quarantined TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_at ON records (at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
"""``size`` is the body's length; ``quarantined`` is NULL while the record waits for
upload and the reason once it is set aside; ``body`` is the example as JSON."""

_IDLE_EVICTION_S = 60.0
"""How often age eviction runs when no rows arrive."""
_IN_CHUNK = 500
"""Sequence numbers per ``IN (...)`` clause."""


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    """Bounds of the ledger and its buffer; see the settings of the same names."""

    max_bytes: int = 256 * 2**20
    max_age_s: float = 7 * 86400.0
    max_record_bytes: int = 4 * 2**20
    max_buffered_bytes: int = 32 * 2**20
    flush_interval_s: float = 0.5


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """What the ledger holds and has done (totals since it was created)."""

    kept: int = 0
    """Records written."""
    queued: int = 0
    """Records waiting for upload."""
    queued_bytes: int = 0
    uploaded: int = 0
    """Records the gateway acknowledged."""
    evicted_age: int = 0
    evicted_space: int = 0
    quarantined: int = 0
    dropped: int = 0
    """Rows never written: the buffer was full, or the disk refused them."""




class HardRows(NamedTuple):
    """The hard rows of one request, copied out of it: what the request path hands over."""

    task: str
    model_version: str
    policy_version: str
    inputs: dict[str, np.ndarray]
    """Input name -> ``[k, ...]`` (a copy, never a view of the request's buffer)."""
    edge_scores: np.ndarray
    """``[k, classes]``: the edge model's class scores."""
    cloud_scores: np.ndarray | None
    """``[k, classes]``: the cloud's class scores where ``cloud_answered`` says so."""
    cloud_answered: np.ndarray | None
    """``bool [k]``: rows the cloud answered (None: none did)."""
    route: np.ndarray
    """``uint8 [k]``: route codes (``router.ROUTES``)."""
    reason: np.ndarray
    """``uint8 [k]``: reason codes (``router.REASONS``)."""
    confidence: np.ndarray
    cloud_model_version: str
    at: float
    review: np.ndarray | None = None
    """``bool [k]``: rows the router sends to the human review queue (None: none)."""
    answer_id: str = ""
    """The better answer the rows belong to, when the app asked for one."""
    answer_rows: np.ndarray | None = None
    """``int64 [k]``: each row's index in that answer's request."""

    @property
    def nbytes(self) -> int:
        """Memory the rows hold."""
        return sum(a.nbytes for a in self.inputs.values()) + self.edge_scores.nbytes

    def examples(self) -> list[HardExample]:
        """One record per row (off the request path: this encodes)."""
        out = []
        routes, reasons = self.route.tolist(), self.reason.tolist()
        confidence = self.confidence.tolist()
        answered = (self.cloud_answered.tolist() if self.cloud_answered is not None
                    else [False] * len(routes))
        review = self.review.tolist() if self.review is not None else [False] * len(routes)
        answer_rows = (self.answer_rows.tolist() if self.answer_rows is not None
                       else list(range(len(routes))))
        for j in range(len(routes)):
            cloud = (float32_values(self.cloud_scores[j])
                     if answered[j] and self.cloud_scores is not None else None)
            out.append(HardExample(
                task=self.task, model_version=self.model_version,
                policy_version=self.policy_version,
                inputs=tuple(InputRow.of(name, a[j:j + 1]) for name, a in self.inputs.items()),
                edge_scores=float32_values(self.edge_scores[j]), cloud_scores=cloud,
                cloud_model_version=self.cloud_model_version if cloud is not None else "",
                route=ROUTES[routes[j]].value,
                reason=REVIEW if review[j] else REASONS[reasons[j]].value,
                confidence=float(confidence[j]), at=self.at, answer_id=self.answer_id,
                answer_row=int(answer_rows[j]) if self.answer_id else 0,
            ))
        return out


class HardExampleLedger:
    """Durable, bounded queue of hard examples, oldest first.

    ``add`` runs on the event loop; everything that touches the database runs
    in worker threads (the ``*_async`` methods and the flush task), one at a
    time. Construct it inside the running loop only if you call :meth:`start`.
    """

    def __init__(self, path: Path, agent_id: str, limits: LedgerLimits | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not AGENT_ID_RE.match(agent_id):
            raise InvalidInput(f"agent id {agent_id!r} cannot name hard-example records: use "
                               "up to 128 letters, digits and _.:@- (starting with a letter "
                               "or digit)")
        self.path = Path(path)
        self.agent_id = agent_id
        self.limits = limits or LedgerLimits()
        self._clock = clock
        self._buffer: list[HardRows] = []
        self._buffered_bytes = 0
        self._dropped = 0
        """Rows dropped since the last write (added to the stored counter by the next one)."""
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._urgent: asyncio.Event | None = None
        """Set when rows for review arrive (made by the first :meth:`wait_urgent`)."""
        self._last_eviction = 0.0
        self._write_failing = False
        """True from a failed write to the next good one (the failure is logged once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_database(self.path)
        self._stats = self._read_stats()
        self._import_spool()

    # -- request path ---------------------------------------------------------------

    def add(self, rows: HardRows) -> None:
        """Keep the hard rows of one request (no I/O); dropped and counted when full."""
        size = rows.nbytes
        if self._buffered_bytes + size > self.limits.max_buffered_bytes:
            self._dropped += len(rows.route)
            return
        self._buffer.append(rows)
        self._buffered_bytes += size
        if rows.review is not None and self._urgent is not None:
            self._urgent.set()  # a reviewer waits for this row: the uploader sends it now

    async def wait_urgent(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for rows a reviewer waits for; True when some came."""
        if self._urgent is None:
            self._urgent = asyncio.Event()
        try:
            await asyncio.wait_for(self._urgent.wait(), timeout_s)
        except TimeoutError:
            return False
        self._urgent.clear()
        return True

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Flush the buffer every ``flush_interval_s`` (inside the running loop)."""
        self._task = asyncio.create_task(self._flush_loop(), name="hard-examples-flush")

    async def aclose(self) -> None:
        """Stop the flush task, write what is buffered, close the database."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush_async()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close the database (what is still buffered is not written: see :meth:`aclose`)."""
        with self._lock:
            self._db.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.flush_interval_s)
            if (self._buffer or self._dropped
                    or self._clock() - self._last_eviction > _IDLE_EVICTION_S):
                await self.flush_async()

    # -- writing ---------------------------------------------------------------------

    def _take(self) -> tuple[list[HardRows], int]:
        items, self._buffer = self._buffer, []
        dropped, self._dropped = self._dropped, 0
        self._buffered_bytes = 0
        return items, dropped

    def _give_back(self, items: list[HardRows], dropped: int) -> None:
        """Put rows whose write failed back in front of the buffer, as far as it holds them."""
        kept: list[HardRows] = []
        size = self._buffered_bytes
        for rows in items:
            if size + rows.nbytes <= self.limits.max_buffered_bytes:
                kept.append(rows)
                size += rows.nbytes
            else:
                dropped += len(rows.route)
        self._buffer[:0] = kept
        self._buffered_bytes = size
        self._dropped += dropped

    async def flush_async(self) -> int:
        """Write the buffer to the ledger in a worker thread; returns the records written.

        When the write fails (a full disk), the rows go back to the buffer as far
        as it holds them and the rest are counted as dropped; nothing raises.
        """
        items, dropped = self._take()
        try:
            written = await asyncio.to_thread(self._write, items, dropped)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._give_back(items, dropped)
            # Once per failing spell, not once per flush: a full disk stays full a while.
            if not self._write_failing:
                log.error("hard_examples_write_failed", error=str(exc),
                          rows=sum(len(r.route) for r in items))
            self._write_failing = True
            return 0
        if self._write_failing:
            log.info("hard_examples_write_recovered")
            self._write_failing = False
        return written

    def flush(self) -> int:
        """:meth:`flush_async` in the calling thread (raises what the write raises)."""
        items, dropped = self._take()
        try:
            return self._write(items, dropped)
        except BaseException:
            self._give_back(items, dropped)
            raise

    def _write(self, items: list[HardRows], dropped: int) -> int:
        examples = [example for rows in items for example in rows.examples()]
        return self._insert(examples, dropped)

    def _insert(self, examples: list[HardExample], dropped: int = 0) -> int:
        """Insert records, evict past the bounds, update the counters: one transaction."""
        now = self._clock()
        limit = self.limits.max_record_bytes
        with self._transaction() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            seq = row[0] if row else 0
            quarantined = 0
            records = []
            for example in examples:
                seq += 1
                kept = KeptExample.new(self.agent_id, seq, example)
                body = json.dumps(example.to_dict(), separators=(",", ":")).encode()
                reason = None
                if example.nbytes > limit:
                    reason = f"inputs of {example.nbytes} bytes exceed the upload limit of {limit}"
                    quarantined += 1
                records.append((seq, kept.record_id, example.at, len(body), reason, body))
            db.executemany("INSERT INTO records (seq, record_id, at, size, quarantined, body) "
                           "VALUES (?, ?, ?, ?, ?, ?)", records)
            queued = [r[3] for r in records if r[4] is None]
            _bump(db, kept=len(records), quarantined=quarantined, dropped=dropped,
                  stored_bytes=sum(r[3] for r in records), queued=len(queued),
                  queued_bytes=sum(queued))
            evicted_age, evicted_space = self._evict(db, now)
            self._last_eviction = now
        if quarantined:
            log.warning("hard_examples_quarantined", count=quarantined,
                        reason="larger than the upload limit", limit=limit)
        if evicted_age or evicted_space:
            log.warning("hard_examples_evicted", age=evicted_age, space=evicted_space)
        return len(records)

    def _evict(self, db: sqlite3.Connection, now: float) -> tuple[int, int]:
        """Delete records past the age limit, then the oldest while over the byte limit."""
        aged = _delete(db, "at < ?", (now - self.limits.max_age_s,))
        (total,) = db.execute("SELECT value FROM counters WHERE name = 'stored_bytes'"
                              ).fetchone() or (0,)
        excess = total - self.limits.max_bytes
        evicted = 0
        if excess > 0:
            last = None
            for seq, size in db.execute("SELECT seq, size FROM records ORDER BY seq"):
                last, excess = seq, excess - size
                if excess <= 0:
                    break
            evicted = _delete(db, "seq <= ?", (last,))
        _bump(db, evicted_age=aged, evicted_space=evicted)
        return aged, evicted

    # -- reading and acknowledging -----------------------------------------------------

    def queued(self, max_records: int, max_bytes: int) -> list[KeptExample]:
        """The oldest records waiting for upload: at most ``max_records``, and at most
        ``max_bytes`` of body unless one record alone is larger (blocking).

        A record that cannot be read back, or that another agent id kept (the
        agent was renamed), is quarantined here and skipped.
        """
        out: list[KeptExample] = []
        bad: dict[int, str] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, record_id, size, body FROM records WHERE quarantined IS NULL "
                "ORDER BY seq LIMIT ?", (max_records,)).fetchall()
        total = 0
        for seq, rid, size, body in rows:
            if out and total + size > max_bytes:
                break
            try:
                agent_id, _, _ = parse_record_id(rid)
                example = HardExample.from_dict(json.loads(body))
            except (InvalidInput, ValueError) as exc:
                bad[seq] = f"unreadable record ({type(exc).__name__})"
                continue
            if agent_id != self.agent_id:
                bad[seq] = f"kept as agent {agent_id}, not {self.agent_id}"
                continue
            out.append(KeptExample(rid, agent_id, seq, example))
            total += size
        if bad:
            self.acknowledge((), bad)
        return out

    def acknowledge(self, seqs: Iterable[int], quarantine: Mapping[int, str] | None = None
                    ) -> int:
        """Forget records the gateway holds; set aside those it refused (blocking).

        Returns how many records were forgotten (records evicted meanwhile are
        not counted twice).
        """
        seqs = list(seqs)
        quarantine = dict(quarantine or {})
        with self._transaction() as db:
            removed = 0
            for chunk in _chunks(seqs):
                marks = ",".join("?" * len(chunk))
                removed += _delete(db, f"seq IN ({marks}) AND quarantined IS NULL", chunk)
            set_aside = set_aside_bytes = 0
            for seq, reason in quarantine.items():
                row = db.execute("UPDATE records SET quarantined = ? WHERE seq = ? AND "
                                 "quarantined IS NULL RETURNING size",
                                 (reason[:500], seq)).fetchone()
                if row is not None:
                    set_aside += 1
                    set_aside_bytes += row[0]
            _bump(db, uploaded=removed, quarantined=set_aside, queued=-set_aside,
                  queued_bytes=-set_aside_bytes)
        if set_aside:
            log.warning("hard_examples_quarantined", count=set_aside,
                        reason=next(iter(quarantine.values())))
        return removed

    async def queued_async(self, max_records: int, max_bytes: int) -> list[KeptExample]:
        """:meth:`queued` in a worker thread."""
        return await asyncio.to_thread(self.queued, max_records, max_bytes)

    async def acknowledge_async(self, seqs: Iterable[int],
                                quarantine: Mapping[int, str] | None = None) -> int:
        """:meth:`acknowledge` in a worker thread."""
        return await asyncio.to_thread(self.acknowledge, list(seqs), quarantine)

    # -- counters -----------------------------------------------------------------------

    @property
    def stats(self) -> LedgerStats:
        """Counters as of the last transaction, plus rows dropped since (no I/O)."""
        stats = self._stats
        if self._dropped:
            stats = LedgerStats(**{**_as_dict(stats), "dropped": stats.dropped + self._dropped})
        return stats

    def _read_stats(self) -> LedgerStats:
        with self._lock:
            return _stats_of(self._db)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the counters are re-read after it commits."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._stats = _stats_of(db)

    # -- the former JSON-lines spool ----------------------------------------------------

    def _import_spool(self) -> None:
        """Move rows spooled by an older agent (``*.jsonl`` beside the ledger) into it."""
        files = sorted(self.path.parent.glob("*.jsonl"))
        if not files:
            return
        examples = []
        for path in files:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    examples.append(_from_spool_line(json.loads(line)))
                except (ValueError, InvalidInput, KeyError, TypeError, AttributeError):
                    continue  # a torn last line
        self._insert(examples)
        for path in files:
            path.unlink(missing_ok=True)
        log.info("hard_examples_imported", count=len(examples), files=len(files))


def open_database(path: Path) -> sqlite3.Connection:
    """Open (or create) the ledger; a file that is not a database is moved aside.

    The answers store (:mod:`edge_agent.answers`) keeps its own table in the same
    file, through a connection of its own opened here too.
    """
    try:
        return _connect(path)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
        log.error("hard_examples_ledger_damaged", path=str(path), moved_to=str(aside),
                  error=str(exc))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
        return _connect(path)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        _recount(db)
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _stats_of(db: sqlite3.Connection) -> LedgerStats:
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    return LedgerStats(**{f.name: int(counters.get(f.name, 0)) for f in fields(LedgerStats)})


def _recount(db: sqlite3.Connection) -> None:
    """Set the counters that also go down (queued, queued_bytes, stored_bytes) from the
    records themselves: at open, one pass over the sizes."""
    queued, queued_bytes, stored_bytes = db.execute(
        "SELECT COALESCE(SUM(quarantined IS NULL), 0), "
        "COALESCE(SUM(CASE WHEN quarantined IS NULL THEN size ELSE 0 END), 0), "
        "COALESCE(SUM(size), 0) FROM records").fetchone()
    db.executemany("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                   [("queued", queued), ("queued_bytes", queued_bytes),
                    ("stored_bytes", stored_bytes)])


def _delete(db: sqlite3.Connection, where: str, params) -> int:
    """Delete the records ``where`` says, keeping the gauges right; returns how many."""
    count, size, queued, queued_bytes = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(quarantined IS NULL), 0), "
        "COALESCE(SUM(CASE WHEN quarantined IS NULL THEN size ELSE 0 END), 0) "
        f"FROM records WHERE {where}", params).fetchone()
    if count:
        db.execute(f"DELETE FROM records WHERE {where}", params)
        _bump(db, stored_bytes=-size, queued=-queued, queued_bytes=-queued_bytes)
    return count


def _bump(db: sqlite3.Connection, **deltas: int) -> None:
    db.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        [(name, value) for name, value in deltas.items() if value],
    )


def _as_dict(stats: LedgerStats) -> dict[str, int]:
    return {f.name: getattr(stats, f.name) for f in fields(LedgerStats)}


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def _from_spool_line(record: dict) -> HardExample:
    """A row of the former JSON-lines spool (inputs as a mapping by name)."""
    inputs = [{"name": name, **tensor} for name, tensor in record["inputs"].items()]
    return HardExample.from_dict({**record, "inputs": inputs})
