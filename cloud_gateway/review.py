"""The human review queue: rows the cloud was unsure of, waiting for a person's label.

An agent marks a row for review (the router's ``review_threshold``) and uploads
it with its other hard examples; when the gateway stores an upload it also
puts each review row in the queue. Both live in the registry's storage, so
every replica sees the same queue::

    reviews/items/<record id>.json              a row waiting (or once waiting) for a
                                                label: the hard-example record, written
                                                create-only (a resend writes nothing)
    reviews/labels/<agent id>/<record id>.json  its label: class, reviewer, time;
                                                written create-only, so a row is labelled
                                                once even when two reviewers or two
                                                replicas race

The queue is the items without a label and younger than ``max_age_s``, oldest
first. Labelling checks, in order: the id names a row (else NotFound), the row
is younger than ``max_age_s`` (else FailedPrecondition: the row is known but
its time is over, and the agent no longer keeps the answer it would improve),
the class is one of the task's (else InvalidInput), and no label exists (else
FailedPrecondition, naming who labelled it). Labels sit under their agent's id,
so an agent's label stream lists only its own.

Objects never change once written, so what is read is kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

import numpy as np
import structlog

from edgecloud.cloud_gateway.storage import Conflict, ObjectStore
from edgecloud.core.errors import FailedPrecondition, InvalidInput, NotFound
from edgecloud.core.hard_examples import AGENT_ID_RE, KeptExample, parse_record_id
from edgecloud.router import REVIEW

log = structlog.get_logger("edgecloud.gateway.review")

REGISTRY_PREFIX = "reviews/"
"""Where a registry keeps the review queue."""
_ITEMS = "items/"
_LABELS = "labels/"
DEFAULT_LIST = 100
"""Rows a listing returns when the caller names no limit."""
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Label:
    """A reviewer's label of one row."""

    review_id: str
    agent_id: str
    task: str
    answer_id: str
    answer_row: int
    label: int
    reviewer: str
    labelled_at: float

    @classmethod
    def from_dict(cls, data: dict) -> Label:
        return cls(str(data["review_id"]), str(data["agent_id"]), str(data["task"]),
                   str(data.get("answer_id") or ""), int(data.get("answer_row") or 0),
                   int(data["label"]), str(data["reviewer"]), float(data["labelled_at"]))


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A row in the queue, with what a reviewer sees of it."""

    kept: KeptExample
    classes: int
    edge_class: int
    edge_score: float
    cloud_class: int
    cloud_score: float
    expires_at: float


def review_row(kept: KeptExample, max_age_s: float) -> ReviewRow:
    """What a reviewer sees of a row: class count and each side's top class."""
    example = kept.example
    edge = np.asarray(example.edge_scores, dtype=np.float64)
    cloud = np.asarray(example.cloud_scores or (), dtype=np.float64)
    return ReviewRow(
        kept, classes=int(edge.size),
        edge_class=int(edge.argmax()) if edge.size else 0,
        edge_score=float(edge.max()) if edge.size else 0.0,
        cloud_class=int(cloud.argmax()) if cloud.size else 0,
        cloud_score=float(cloud.max()) if cloud.size else 0.0,
        expires_at=example.at + max_age_s,
    )


class ReviewQueue:
    """The review queue on an object store (every method blocking: call from a thread)."""

    def __init__(self, store: ObjectStore, prefix: str = REGISTRY_PREFIX, *,
                 max_age_s: float = 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._prefix = prefix
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, KeptExample] = {}
        self._labels: dict[str, Label] = {}

    def _item_key(self, review_id: str) -> str:
        return f"{self._prefix}{_ITEMS}{review_id}.json"

    def _label_key(self, agent_id: str, review_id: str) -> str:
        return f"{self._prefix}{_LABELS}{agent_id}/{review_id}.json"

    # -- filling -----------------------------------------------------------------------

    def enqueue(self, records: list[KeptExample]) -> int:
        """Put the review rows among ``records`` (stored hard examples) in the queue;
        returns how many were new (a resent row is queued once)."""
        added = 0
        for kept in records:
            if kept.example.reason != REVIEW:
                continue
            data = json.dumps(kept.to_dict(), sort_keys=True).encode()
            try:
                self._store.put(self._item_key(kept.record_id), data, if_none_match=True)
            except Conflict:
                continue
            added += 1
        if added:
            log.info("review_rows_queued", count=added)
        return added

    # -- reading -----------------------------------------------------------------------

    def pending(self, task: str = "", limit: int = DEFAULT_LIST) -> tuple[list[ReviewRow], int]:
        """Rows waiting for a label (of ``task``, or of every task), oldest first: at most
        ``limit`` of them, and how many wait in all."""
        limit = min(limit or DEFAULT_LIST, MAX_LIST)
        labelled = {key.rpartition("/")[2].removesuffix(".json")
                    for key in self._store.list(self._prefix + _LABELS)}
        oldest = self._clock() - self.max_age_s
        rows = []
        for key in self._store.list(self._prefix + _ITEMS):
            review_id = key.rpartition("/")[2].removesuffix(".json")
            if review_id in labelled:
                continue
            kept = self._item(review_id)
            if kept is None or kept.example.at < oldest:
                continue
            if task and kept.example.task != task:
                continue
            rows.append(kept)
        rows.sort(key=lambda k: (k.example.at, k.record_id))
        return [review_row(k, self.max_age_s) for k in rows[:limit]], len(rows)

    def _item(self, review_id: str) -> KeptExample | None:
        with self._lock:
            kept = self._items.get(review_id)
        if kept is not None:
            return kept
        stored = self._store.get(self._item_key(review_id))
        if stored is None:
            return None
        try:
            kept = KeptExample.from_dict(json.loads(stored.data))
        except (ValueError, InvalidInput):
            log.warning("review_row_unreadable", review_id=review_id)
            return None
        with self._lock:
            self._items[review_id] = kept
        return kept

    def labels(self, agent_id: str, after: float = 0.0) -> list[Label]:
        """The labels of ``agent_id``'s rows given at or after ``after``, oldest first."""
        if not AGENT_ID_RE.match(agent_id or ""):
            raise InvalidInput(f"agent id {agent_id[:200]!r} is not valid")
        folder = f"{self._prefix}{_LABELS}{agent_id}/"
        found = [label for key in self._store.list(folder)
                 if (label := self._label(key)) is not None and label.labelled_at >= after]
        return sorted(found, key=lambda label: (label.labelled_at, label.review_id))

    def label_keys(self) -> dict[str, list[str]]:
        """Every label's key, by agent id (one listing)."""
        folder = self._prefix + _LABELS
        keys: dict[str, list[str]] = {}
        for key in self._store.list(folder):
            agent_id, _, _ = key[len(folder):].partition("/")
            keys.setdefault(agent_id, []).append(key)
        return keys

    def read_labels(self, keys: list[str]) -> list[Label]:
        """The labels under ``keys`` (each read once per queue), by time."""
        found = [label for key in keys if (label := self._label(key)) is not None]
        return sorted(found, key=lambda label: (label.labelled_at, label.review_id))

    def all_labels(self, task: str = "") -> dict[str, Label]:
        """Every label kept (of ``task``, or of every task), by review id (the record id
        of its row)."""
        labels = (self._label(key) for key in self._store.list(self._prefix + _LABELS))
        return {label.review_id: label for label in labels
                if label is not None and (not task or label.task == task)}

    def _label(self, key: str) -> Label | None:
        with self._lock:
            label = self._labels.get(key)
        if label is not None:
            return label
        stored = self._store.get(key)
        if stored is None:
            return None
        try:
            label = Label.from_dict(json.loads(stored.data))
        except (ValueError, KeyError, TypeError):
            log.warning("review_label_unreadable", key=key)
            return None
        with self._lock:
            self._labels[key] = label
        return label

    # -- labelling ---------------------------------------------------------------------

    def label(self, review_id: str, label: int, reviewer: str) -> Label:
        """Label a row, once (see the module's rules for what is refused)."""
        try:
            agent_id, _, _ = parse_record_id(review_id)
        except InvalidInput:
            raise NotFound(f"no review row {review_id[:200]!r}") from None
        kept = self._item(review_id)
        if kept is None:
            raise NotFound(f"no review row {review_id}")
        example = kept.example
        now = self._clock()
        if example.at < now - self.max_age_s:
            raise FailedPrecondition(
                f"review row {review_id} expired: it waited more than "
                f"{self.max_age_s:g} s for a label")
        classes = len(example.edge_scores)
        if isinstance(label, bool) or not 0 <= int(label) < classes:
            raise InvalidInput(f"label {label} is not a class of task {example.task!r} "
                               f"(0 to {classes - 1})")
        key = self._label_key(agent_id, review_id)
        given = Label(review_id, agent_id, example.task, example.answer_id,
                      example.answer_row, int(label), reviewer, now)
        try:
            self._store.put(key, json.dumps(asdict(given), sort_keys=True).encode(),
                            if_none_match=True)
        except Conflict:
            earlier = self._label(key)
            who = (f" by {earlier.reviewer} as class {earlier.label}"
                   if earlier is not None else "")
            raise FailedPrecondition(f"review row {review_id} is already labelled{who}") \
                from None
        with self._lock:
            self._labels[key] = given
        log.info("review_labelled", review_id=review_id, task=example.task, label=int(label),
                 reviewer=reviewer)
        return given


class LabelFeed:
    """Every agent's labels as they are given, for the agents' WatchLabels streams.

    One refresh task per replica, running while any stream is open, lists the
    labels once every ``poll_s`` (at once after a label given through this
    replica) and wakes every stream; each stream then reads only its own agent's
    new labels (objects never change, so each is read once per replica). Ten
    thousand streams cost one listing per interval, not ten thousand.
    """

    def __init__(self, queue: ReviewQueue, poll_s: float = 1.0) -> None:
        self.queue = queue
        self._poll_s = poll_s
        self._keys: dict[str, list[str]] = {}
        """Label keys by agent id, as of the last listing."""
        self._changed: asyncio.Event | None = None
        """Set (and replaced) after each listing."""
        self._kick: asyncio.Event | None = None
        """Set to list again at once."""
        self._streams = 0
        self._task: asyncio.Task | None = None
        self._closed = False

    async def label(self, review_id: str, label: int, reviewer: str) -> Label:
        """:meth:`ReviewQueue.label` in a worker thread; the streams hear of it at once."""
        given = await asyncio.to_thread(self.queue.label, review_id, label, reviewer)
        if self._kick is not None:
            self._kick.set()
        return given

    async def watch(self, agent_id: str, after: float) -> AsyncIterator[Label]:
        """``agent_id``'s labels given at or after ``after``, then each new one, once each;
        ends when the feed closes (a draining replica), and the agent reconnects."""
        if not AGENT_ID_RE.match(agent_id or ""):
            raise InvalidInput(f"agent id {agent_id[:200]!r} is not valid")
        self._streams += 1
        try:
            if self._task is None or self._task.done():
                self._changed, self._kick = asyncio.Event(), asyncio.Event()
                self._task = asyncio.create_task(self._refresh(), name="review-labels")
            sent: set[str] = set()
            for label in await asyncio.to_thread(self.queue.labels, agent_id, after):
                sent.add(label.review_id)
                yield label
            while not self._closed:
                assert self._changed is not None
                await self._changed.wait()
                if self._closed:
                    return
                keys = [key for key in self._keys.get(agent_id, ())
                        if _review_id(key) not in sent]
                if not keys:
                    continue
                for label in await asyncio.to_thread(self.queue.read_labels, keys):
                    sent.add(label.review_id)
                    if label.labelled_at >= after:
                        yield label
        finally:
            self._streams -= 1

    async def _refresh(self) -> None:
        """List the labels every ``poll_s`` (or when kicked) while any stream is open."""
        while self._streams > 0:
            try:
                self._keys = await asyncio.to_thread(self.queue.label_keys)
            except Exception:  # storage trouble: the streams wait for the next listing
                log.exception("review_labels_listing_failed")
            assert self._changed is not None and self._kick is not None
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._poll_s)
            self._kick.clear()

    async def aclose(self) -> None:
        """End every stream (so a drain does not wait on them) and the refresh task."""
        self._closed = True
        if self._changed is not None:
            self._changed.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _review_id(key: str) -> str:
    return key.rpartition("/")[2].removesuffix(".json")
