"""Answers that get better: one record per ``answer=fast_then_better`` request, by id.

An app that asks for a fast answer then a better one is answered at once from
the edge model, with an ``answer_id``; the rows the router escalates go to the
cloud behind that answer (:mod:`edge_agent.service`). This store keeps each
request's answer as it stands, so the app can ask for it by id:

    pending ──cloud answered──▶ answered (source cloud)
            └─cloud failed────▶ cloud_failed (the edge answer stands)
    not_escalated (no row was escalated: confident, budget spent, no cloud)
    any state ──reviewer──▶ answered (source reviewer, with the rows' labels)

Records live in the hard-example ledger's SQLite file, in their own table
(``answers``, created when missing, so a ledger from an older agent gains it
when it opens), and survive a restart. The request path never touches the
disk: :meth:`AnswerStore.add` and :meth:`AnswerStore.update` change a record in
memory, and a flush task writes the changed ones every ``flush_interval_s``
from a worker thread (``aclose`` writes the rest). A record still pending when
the agent stops, or found pending when it starts (it was killed), is final
with state ``cloud_failed``: no record stays pending forever. The table is
bounded by count (``max_answers``) and age (``max_age_s``); the oldest go
first, and an expired id is not found even before its row is deleted.

Watchers (:meth:`AnswerStore.watch`) wait on one change event that every
change sets and replaces, and read their ids again from memory when it fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import structlog

from edgecloud.core.errors import InvalidInput, NotFound
from edgecloud.core.tensors import V2_TO_NUMPY, v2_datatype
from edgecloud.edge_agent.hard_examples import open_database

log = structlog.get_logger("edgecloud.agent.answers")

ANSWER_ID_RE = re.compile(r"[0-9a-f]{32}")
"""An answer id: 32 lowercase hex digits (128 random bits)."""
MAX_WATCH_IDS = 100
"""Most ids one Watch call follows."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_created_at ON answers (created_at);
"""
"""``body`` is the record as JSON (:meth:`AnswerRecord.to_dict`)."""


class AnswerState(StrEnum):
    """Where a better answer stands."""

    PENDING = "pending"
    """The cloud's answer is awaited."""
    ANSWERED = "answered"
    """The better answer is here (source ``cloud`` or ``reviewer``)."""
    CLOUD_FAILED = "cloud_failed"
    """The escalation failed, or the agent stopped first: the edge answer stands."""
    NOT_ESCALATED = "not_escalated"
    """No row was escalated (each row's ``better`` says why): the edge answer stands."""


FINAL_STATES = frozenset({AnswerState.ANSWERED, AnswerState.CLOUD_FAILED,
                          AnswerState.NOT_ESCALATED})


@dataclass(frozen=True, slots=True)
class AnswerLimits:
    """Bounds of the store; see the settings of the same names."""

    max_answers: int = 100_000
    max_age_s: float = 86400.0
    flush_interval_s: float = 0.5


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """One request's answer as it stands: an immutable value (a change makes a new one)."""

    answer_id: str
    task: str
    state: AnswerState
    source: str
    """``edge``, ``cloud`` or ``reviewer``."""
    answered_by: str
    """``MODEL:VERSION`` of the model that answered, or the reviewer."""
    created_at: float
    """Unix seconds when the request was answered at the edge."""
    answered_at: float | None
    """Unix seconds when the answer as it stands was given; None while pending."""
    route: tuple[str, ...]
    """Per row: the route of the answer as it stands."""
    better: tuple[str, ...]
    """Per row: what the request was told would come (``router.Better``)."""
    classes: tuple[int, ...]
    """Per row: the predicted class of the answer as it stands."""
    confidence: tuple[float, ...]
    """Per row: its confidence."""
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    """The numeric outputs the request asked for, as they stand."""
    labels: tuple[int, ...] = ()
    """Per row, once a reviewer labelled the rows."""
    detail: str = ""
    """Why the answer is final without the cloud's, when it is."""

    @property
    def final(self) -> bool:
        """True when nothing more is awaited from the cloud."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        """The record as a JSON document (outputs as datatype, shape and nested data)."""
        return {
            "answer_id": self.answer_id, "task": self.task, "state": self.state.value,
            "source": self.source, "answered_by": self.answered_by,
            "created_at": self.created_at, "answered_at": self.answered_at,
            "route": list(self.route), "better": list(self.better),
            "classes": list(self.classes), "confidence": list(self.confidence),
            "outputs": [{"name": name, "datatype": v2_datatype(value.dtype),
                         "shape": list(value.shape), "data": value.tolist()}
                        for name, value in self.outputs.items()],
            "labels": list(self.labels), "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, doc: Mapping) -> AnswerRecord:
        """The record :meth:`to_dict` wrote."""
        outputs = {
            out["name"]: np.asarray(out["data"], dtype=V2_TO_NUMPY[out["datatype"]]
                                    ).reshape(out["shape"])
            for out in doc["outputs"]
        }
        return cls(
            answer_id=doc["answer_id"], task=doc["task"], state=AnswerState(doc["state"]),
            source=doc["source"], answered_by=doc["answered_by"],
            created_at=float(doc["created_at"]),
            answered_at=None if doc["answered_at"] is None else float(doc["answered_at"]),
            route=tuple(doc["route"]), better=tuple(doc["better"]),
            classes=tuple(int(c) for c in doc["classes"]),
            confidence=tuple(float(c) for c in doc["confidence"]), outputs=outputs,
            labels=tuple(int(c) for c in doc["labels"]), detail=doc["detail"],
        )


def new_answer_id() -> str:
    """A fresh answer id (random: ids stay unique across restarts and agents)."""
    return secrets.token_hex(16)


def numeric_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs a record keeps: the numeric ones (strings are not kept)."""
    return {name: value for name, value in outputs.items()
            if value.dtype.kind in "biuf"}


def check_answer_id(answer_id: str) -> str:
    """``answer_id`` when it is well formed; InvalidInput otherwise."""
    if not isinstance(answer_id, str) or not ANSWER_ID_RE.fullmatch(answer_id):
        shown = answer_id[:40] if isinstance(answer_id, str) else type(answer_id).__name__
        raise InvalidInput(f"answer id {shown!r} is malformed: an answer id is 32 lowercase "
                           "hex digits, as the answer_id response parameter gives it")
    return answer_id


class AnswerStore:
    """Bounded, durable records of better answers, by id.

    ``add``, ``update`` and ``set_label`` run on the event loop without I/O;
    reads of records no longer in memory and every write run in worker
    threads, one at a time.
    """

    def __init__(self, path: Path, limits: AnswerLimits | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.limits = limits or AnswerLimits()
        self._clock = clock
        self._live: dict[str, AnswerRecord] = {}
        """Records pending, or changed and not yet written."""
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._write_failing = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_database(self.path)
        try:
            self._db.executescript(_SCHEMA)
            self._fail_unfinished()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Write changed records every ``flush_interval_s`` (inside the running loop)."""
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._flush_loop(), name="answers-flush")

    async def aclose(self) -> None:
        """Stop the flush task; records still pending become final; write all; close."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for record in list(self._live.values()):
            if not record.final:
                self.update(_failed(record, self._clock(),
                                    "the agent stopped before the cloud answered"))
        await self.flush_async()
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._db.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.flush_interval_s)
            if self._dirty:
                await self.flush_async()

    # -- changes (event loop, no I/O) ----------------------------------------------------

    def add(self, record: AnswerRecord) -> None:
        """Keep a new record (written by the next flush)."""
        self.update(record)

    def update(self, record: AnswerRecord) -> None:
        """Replace a record with its next state, and wake the watchers."""
        self._live[record.answer_id] = record
        self._dirty.add(record.answer_id)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def set_label(self, answer_id: str, labels: Sequence[int], reviewer: str
                        ) -> AnswerRecord:
        """A reviewer's labels for the rows of an answer: the answer as it stands from now.

        One label per row; NotFound for an unknown or expired id.
        """
        record = await self.get(answer_id)
        labels = tuple(int(label) for label in labels)
        if len(labels) != len(record.route):
            raise InvalidInput(f"answer {answer_id} has {len(record.route)} rows; "
                               f"got {len(labels)} labels")
        if not reviewer:
            raise InvalidInput("a label needs the reviewer's name")
        labelled = replace(record, state=AnswerState.ANSWERED, source="reviewer",
                           answered_by=reviewer, answered_at=self._clock(), labels=labels,
                           classes=labels, detail="")
        self.update(labelled)
        return labelled

    async def set_row_label(self, answer_id: str, row: int, label: int, reviewer: str,
                            at: float) -> AnswerRecord | None:
        """One reviewer's label of one row (from the gateway's review queue), given at ``at``.

        The answer's other rows keep their class (and label -1 until labelled). A label
        already applied is not applied again (the label stream may send it twice):
        returns None then. NotFound for an unknown or expired id; InvalidInput for a row
        the answer does not have.
        """
        record = await self.get(answer_id)
        rows = len(record.route)
        if not 0 <= row < rows:
            raise InvalidInput(f"answer {answer_id} has {rows} rows; got row {row}")
        labels = list(record.labels) if len(record.labels) == rows else [-1] * rows
        if labels[row] == int(label) and record.source == "reviewer":
            return None
        labels[row] = int(label)
        classes = [lab if lab >= 0 else cls for lab, cls in zip(labels, record.classes,
                                                                strict=True)]
        labelled = replace(record, state=AnswerState.ANSWERED, source="reviewer",
                           answered_by=reviewer, answered_at=at, labels=tuple(labels),
                           classes=tuple(classes), detail="")
        self.update(labelled)
        return labelled

    # -- reading ---------------------------------------------------------------------------

    async def get(self, answer_id: str) -> AnswerRecord:
        """The record as it stands; NotFound for an unknown or expired id, InvalidInput for
        a malformed one."""
        check_answer_id(answer_id)
        record = self._live.get(answer_id)
        if record is None:
            record = await asyncio.to_thread(self._read, answer_id)
        if record is None or self._expired(record):
            raise NotFound(f"no answer {answer_id} (unknown, or older than "
                           f"{self.limits.max_age_s:g} s)")
        return record

    async def watch(self, answer_ids: Sequence[str]) -> AsyncIterator[AnswerRecord]:
        """Each record as it stands, then each change, until every one is final.

        Every id is checked before anything is sent (as :meth:`get` does); a
        repeated id is followed once; at most :data:`MAX_WATCH_IDS` ids.
        """
        ids = list(dict.fromkeys(answer_ids))
        if not ids:
            raise InvalidInput("watch needs at least one answer id")
        if len(ids) > MAX_WATCH_IDS:
            raise InvalidInput(f"watch follows at most {MAX_WATCH_IDS} answer ids; "
                               f"got {len(ids)}")
        for answer_id in ids:
            check_answer_id(answer_id)
        sent = {answer_id: await self.get(answer_id) for answer_id in ids}
        for record in sent.values():
            yield record
        waiting = [answer_id for answer_id, record in sent.items() if not record.final]
        while waiting:
            changed = self._changed
            await changed.wait()
            still = []
            for answer_id in waiting:
                record = self._live.get(answer_id)
                if record is None:  # final and written since: read it back
                    record = await self.get(answer_id)
                if record is not sent[answer_id]:
                    sent[answer_id] = record
                    yield record
                if not record.final:
                    still.append(answer_id)
            waiting = still

    def _expired(self, record: AnswerRecord) -> bool:
        return record.created_at < self._clock() - self.limits.max_age_s

    def _read(self, answer_id: str) -> AnswerRecord | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM answers WHERE answer_id = ?",
                                   (answer_id,)).fetchone()
        return None if row is None else AnswerRecord.from_dict(json.loads(row[0]))

    def count(self) -> int:
        """Records stored (blocking; for reports and tests)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    # -- writing ---------------------------------------------------------------------------

    async def flush_async(self) -> int:
        """Write the changed records in a worker thread; returns how many.

        A failed write (a full disk) keeps them in memory for the next flush
        and is logged once per failing spell; nothing raises.
        """
        ids, self._dirty = self._dirty, set()
        records = [self._live[answer_id] for answer_id in ids]
        try:
            await asyncio.to_thread(self._write, records)
        except asyncio.CancelledError:  # the write may not have happened: write them again
            self._dirty |= ids
            raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._dirty |= ids
            if not self._write_failing:
                log.error("answers_write_failed", error=str(exc), records=len(records))
            self._write_failing = True
            return 0
        self._write_failing = False
        for record in records:  # written: memory keeps only what is pending or changed since
            if record.final and self._live.get(record.answer_id) is record \
                    and record.answer_id not in self._dirty:
                del self._live[record.answer_id]
        return len(records)

    def _write(self, records: list[AnswerRecord]) -> None:
        rows = [(r.answer_id, r.created_at, r.state.value,
                 json.dumps(r.to_dict(), separators=(",", ":"))) for r in records]
        now = self._clock()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO answers (answer_id, created_at, state, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (answer_id) DO UPDATE SET state = excluded.state, "
                "body = excluded.body", rows)
            aged = db.execute("DELETE FROM answers WHERE created_at < ?",
                              (now - self.limits.max_age_s,)).rowcount
            crowded = db.execute(
                "DELETE FROM answers WHERE seq <= (SELECT seq FROM answers ORDER BY seq DESC "
                "LIMIT 1 OFFSET ?)", (self.limits.max_answers,)).rowcount
        if aged or crowded:
            log.info("answers_evicted", age=aged, count=crowded)

    def _fail_unfinished(self) -> None:
        """Records left pending by an agent that did not stop cleanly are final now."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM answers WHERE state = ?", (AnswerState.PENDING.value,)
            ).fetchall()
        if not rows:
            return
        now = self._clock()
        failed = [_failed(AnswerRecord.from_dict(json.loads(body)), now,
                          "the agent restarted before the cloud answered") for (body,) in rows]
        self._write(failed)
        log.warning("answers_left_pending", count=len(failed),
                    detail="final as cloud_failed: the edge answer stands")

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _failed(record: AnswerRecord, now: float, detail: str) -> AnswerRecord:
    return replace(record, state=AnswerState.CLOUD_FAILED, answered_at=now, detail=detail)
