"""The gateway's hard-example store, on the registry's storage: one object per upload
and task, shared by every replica.

Layout under the registry's ``hard_examples/`` (a directory or ``s3://``)::

    <task>/<agent id>/<last>-<first>.<records>.<bytes>.<newest>.<digest>.jsonl
                          one upload's records of one task, one JSON document a line,
                          by sequence number; immutable. ``last`` and ``first``: the
                          sequence numbers it spans (20 digits); ``bytes``: its size;
                          ``newest``: its latest ``at`` (Unix seconds, rounded up);
                          ``digest``: 16 hex digits of the sha256 of its bytes
    <task>/<agent id>/<seq>.<hash>.json   one record, as earlier gateways kept them
    <task>/*.jsonl                        records of gateways older still (no ids)
    _agents/<agent id>/<task>             empty: a task the agent stored records of

Earlier layouts are read (export, duplicates), never written. The name says all
that storing and exporting need without reading the object: a listing that
starts after ``first - 1`` returns only the batches that may hold a sequence
range (those that end at or after it: the last sequence number leads), the
sizes add up to an agent's quota, and an export ``since`` a time skips the
batches older than it.

Exactly once: a record id (``AGENT_ID.SEQ.HASH``) names a record for good. An
upload's records are checked, then per task the agent's batches that may hold
their sequence numbers are listed (the recent ones, when the agent sends new
records) and read only where ranges overlap (a resend), to learn which ids they
hold: those are duplicates. The new records become one object per task, written
create-only under a name made from its content, so a replica storing the same
resend at the same moment gets a conflict and counts the records as held. An
upload is acknowledged only once its objects are written (fsync and rename on
a directory, a completed PUT on S3): a crash leaves an object whole or absent,
and what is absent is still in the agent's ledger. Two replicas handed
different resends of the same records at the same moment may both write them;
reads yield each record id once, so an export still holds every row once.

Every record is checked before anything is written: its id must be its own
(this agent, its sequence number, its content hash), its task a valid name,
its inputs within ``max_record_bytes`` and decodable. A record that fails is
refused alone, with a reason, and the agent quarantines it. Each agent has a
storage quota (``agent_quota_bytes``, over the objects this layout writes); an
upload that would pass it is refused with RESOURCE_EXHAUSTED and stays in the
agent's ledger.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from edgecloud.cloud_gateway.storage import Conflict, DirectoryStore, ObjectStore
from edgecloud.core.artifacts import NAME_RE
from edgecloud.core.errors import InvalidInput, Overloaded
from edgecloud.core.hard_examples import AGENT_ID_RE, HASH_DIGITS, HardExample, KeptExample

log = structlog.get_logger("edgecloud.gateway.hard")

REGISTRY_PREFIX = "hard_examples/"
"""Where a registry keeps hard examples."""
_AGENTS = "_agents/"
"""Markers of the tasks each agent stored records of (no task name starts with ``_``)."""
READ_CACHE = 4096
"""Records :meth:`HardExampleStore.recent` keeps in memory after reading them."""
_USAGE_TTL_S = 60.0
"""How long an agent's usage is trusted before it is summed again (other replicas write
to the same registry)."""
_SEQ = 20
_BATCH_RE = re.compile(rf"(\d{{{_SEQ}}})-(\d{{{_SEQ}}})\.(\d+)\.(\d+)\.(-?\d+)"
                       rf"\.([0-9a-f]{{{HASH_DIGITS}}})\.jsonl")
_SINGLE_RE = re.compile(rf"(\d{{{_SEQ}}})\.([0-9a-f]{{{HASH_DIGITS}}})\.json")


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What became of one upload."""

    stored: int
    """Records written now."""
    duplicates: int
    """Records already held (resent)."""
    rejected: tuple[tuple[str, str], ...]
    """``(record id, reason)`` of the records refused."""


@dataclass(frozen=True, slots=True)
class BatchName:
    """What an object's name says of the records in it."""

    first: int
    last: int
    records: int
    nbytes: int
    """Size of the object (0 for one of an earlier layout: it counts toward no quota)."""
    newest: int | None
    """Latest ``at`` of its records, rounded up; None when the name does not say."""
    digest: str

    def name(self) -> str:
        return (f"{self.last:0{_SEQ}d}-{self.first:0{_SEQ}d}.{self.records}.{self.nbytes}."
                f"{self.newest}.{self.digest}.jsonl")

    @classmethod
    def parse(cls, name: str) -> BatchName | None:
        """The name of a batch or of an earlier layout's one-record file; None otherwise."""
        if m := _BATCH_RE.fullmatch(name):
            last, first, records, nbytes, newest, digest = m.groups()
            return cls(int(first), int(last), int(records), int(nbytes), int(newest), digest)
        if m := _SINGLE_RE.fullmatch(name):
            seq = int(m.group(1))
            return cls(seq, seq, 1, 0, None, m.group(2))
        return None


def _start_after(folder: str, seq: int) -> str:
    """The listing position before every batch that ends at or after ``seq``."""
    return f"{folder}{seq - 1:0{_SEQ}d}~" if seq > 0 else ""


class HardExampleStore:
    """Hard examples by task, agent and record id, in an object store.

    ``store``: the registry's store (with ``prefix`` :data:`REGISTRY_PREFIX`), or a
    directory that holds the layout itself.
    """

    def __init__(self, store: ObjectStore | Path, prefix: str = "", *,
                 max_record_bytes: int = 4 * 2**20, agent_quota_bytes: int = 2**30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store: ObjectStore = (DirectoryStore(Path(store)) if isinstance(store, Path)
                                    else store)
        self._prefix = prefix
        self.max_record_bytes = max_record_bytes
        self.agent_quota_bytes = agent_quota_bytes
        self._clock = clock
        self._usage: dict[str, tuple[int, float]] = {}
        self._tasks: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._agent_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._cache: OrderedDict[str, list[KeptExample]] = OrderedDict()
        """Objects :meth:`recent` read lately, by key."""
        self._cached = 0

    def _folder(self, task: str, agent_id: str) -> str:
        return f"{self._prefix}{task}/{agent_id}/"

    def problem(self, agent_id: str, kept: KeptExample) -> str | None:
        """Why ``agent_id`` may not store ``kept``, or None."""
        if kept.agent_id != agent_id:
            return f"record {kept.record_id[:200]!r} is not {agent_id}'s"
        problem = kept.problem()
        if problem is not None:
            return problem
        example = kept.example
        if not re.match(NAME_RE, example.task):
            return f"task name {example.task[:100]!r} is not valid"
        if not math.isfinite(example.at):
            return f"time {example.at} is not a finite number of seconds"
        size = example.nbytes
        if not example.inputs or size > self.max_record_bytes:
            return (f"inputs must hold 1 to {self.max_record_bytes} bytes "
                    f"(this record holds {size})")
        try:
            for row in example.inputs:
                row.array()
        except InvalidInput as exc:
            return exc.message
        return None

    def store(self, agent_id: str, records: list[KeptExample]) -> StoreOutcome:
        """Keep ``agent_id``'s records, once each (blocking).

        Raises InvalidInput for an invalid agent id and Overloaded when the
        records would take the agent past its quota; refuses single records
        in the outcome.
        """
        if not AGENT_ID_RE.match(agent_id or ""):
            raise InvalidInput(f"agent id {agent_id[:200]!r} is not valid")
        rejected: list[tuple[str, str]] = []
        duplicates = 0
        by_task: dict[str, dict[str, KeptExample]] = {}
        for kept in records:
            problem = self.problem(agent_id, kept)
            if problem is not None:
                rejected.append((kept.record_id, problem))
                continue
            group = by_task.setdefault(kept.example.task, {})
            if kept.record_id in group:
                duplicates += 1
            else:
                group[kept.record_id] = kept
        if rejected:
            log.warning("hard_examples_rejected", agent_id=agent_id, count=len(rejected),
                        reason=rejected[0][1])
        with self._lock:
            agent_lock = self._agent_locks[agent_id]
        with agent_lock:  # one upload of an agent at a time on this replica
            stored, held = self._store_new(agent_id, by_task)
        return StoreOutcome(stored, duplicates + held, tuple(rejected))

    def _store_new(self, agent_id: str,
                   by_task: dict[str, dict[str, KeptExample]]) -> tuple[int, int]:
        """Write the records not held yet, one object per task; ``(stored, held)``."""
        held = 0
        batches: list[tuple[str, str, bytes, int]] = []
        for task, group in sorted(by_task.items()):
            known = self._held_ids(task, agent_id, [k.seq for k in group.values()])
            new = sorted((k for k in group.values() if k.record_id not in known),
                         key=lambda k: (k.seq, k.record_id))
            held += len(group) - len(new)
            if new:
                key, data = self._batch(task, agent_id, new)
                batches.append((task, key, data, len(new)))
        size = sum(len(data) for _, _, data, _ in batches)
        if not batches:
            return 0, held
        with self._lock:
            used = self._used(agent_id)
            if used + size > self.agent_quota_bytes:
                raise Overloaded(
                    f"agent {agent_id} has used {used} of its {self.agent_quota_bytes}-byte "
                    f"quota for hard examples; this upload needs {size} more"
                )
            self._usage[agent_id] = (used + size, self._usage[agent_id][1])
        stored = 0
        try:
            for task, key, data, count in batches:
                self._mark(agent_id, task)
                try:
                    self._store.put(key, data, if_none_match=True)
                except Conflict:  # the same records, written by another replica just now
                    held += count
                    continue
                stored += count
        except BaseException:
            with self._lock:
                self._usage.pop(agent_id, None)  # summed again on the next upload
            raise
        return stored, held

    def _batch(self, task: str, agent_id: str, records: list[KeptExample]) -> tuple[str, bytes]:
        """The object holding ``records`` (sorted by sequence number): key and bytes."""
        data = b"".join(json.dumps(k.to_dict(), sort_keys=True).encode() + b"\n"
                        for k in records)
        name = BatchName(first=records[0].seq, last=records[-1].seq, records=len(records),
                         nbytes=len(data),
                         newest=math.ceil(max(k.example.at for k in records)),
                         digest=hashlib.sha256(data).hexdigest()[:HASH_DIGITS])
        return self._folder(task, agent_id) + name.name(), data

    def _held_ids(self, task: str, agent_id: str, seqs: list[int]) -> set[str]:
        """Ids of the agent's stored records of ``task`` that have one of the sequence
        numbers ``seqs``: the objects that may hold them are listed (those ending at or
        after the lowest), and read only when their range holds one of ``seqs``."""
        folder = self._folder(task, agent_id)
        wanted = sorted(set(seqs))
        ids: set[str] = set()
        for key in self._store.list(folder, start_after=_start_after(folder, wanted[0])):
            name = BatchName.parse(key[len(folder):])
            if name is None:
                continue
            at = bisect.bisect_left(wanted, name.first)
            if at < len(wanted) and wanted[at] <= name.last:
                ids.update(k.record_id for k in self._read(key))
        return ids

    def _mark(self, agent_id: str, task: str) -> None:
        """Note that ``agent_id`` stores records of ``task`` (its quota sums that folder)."""
        with self._lock:
            known = task in self._tasks.get(agent_id, ())
        if not known:
            self._store.put(f"{self._prefix}{_AGENTS}{agent_id}/{task}", b"")
            with self._lock:
                self._tasks.setdefault(agent_id, set()).add(task)

    def usage(self, agent_id: str) -> int:
        """Bytes of ``agent_id``'s stored records (summed at most once a minute)."""
        with self._lock:
            return self._used(agent_id)

    def _used(self, agent_id: str) -> int:
        """The agent's usage, from its objects' names (called under the lock)."""
        now = self._clock()
        cached = self._usage.get(agent_id)
        if cached is not None and now - cached[1] < _USAGE_TTL_S:
            return cached[0]
        marks = f"{self._prefix}{_AGENTS}{agent_id}/"
        tasks = {key[len(marks):] for key in self._store.list(marks)}
        self._tasks[agent_id] = tasks
        total = 0
        for task in tasks:
            folder = self._folder(task, agent_id)
            for key in self._store.list(folder):
                name = BatchName.parse(key[len(folder):])
                total += name.nbytes if name is not None else 0
        self._usage[agent_id] = (total, now)
        return total

    def recent(self, limit: int) -> list[KeptExample]:
        """The ``limit`` newest records of every task (by the time the agent kept them),
        newest first, each record id once. One listing; objects are read newest first
        (their names say how new) until no unread one can hold a newer record, and
        kept in memory once read (an object never changes)."""
        if limit < 1:
            return []
        candidates: list[tuple[float, str]] = []
        singles: dict[str, list[tuple[int, str]]] = {}
        for key in self._store.list(self._prefix):
            rest = key[len(self._prefix):]
            if rest.startswith(_AGENTS) or rest.count("/") != 2:
                continue
            name = BatchName.parse(rest.rpartition("/")[2])
            if name is None:
                continue
            if name.newest is None:  # an earlier layout's record: its newest by number
                singles.setdefault(rest.rpartition("/")[0], []).append((name.last, key))
            else:
                candidates.append((float(name.newest), key))
        for found in singles.values():
            candidates += [(math.inf, key) for _, key in sorted(found)[-limit:]]
        candidates.sort(reverse=True)
        best: dict[str, KeptExample] = {}
        for newest, key in candidates:
            if len(best) >= limit and newest < sorted(
                    k.example.at for k in best.values())[-limit]:
                break
            for kept in self._read_cached(key):
                best.setdefault(kept.record_id, kept)
        return sorted(best.values(), key=lambda k: k.example.at, reverse=True)[:limit]

    def _read_cached(self, key: str) -> list[KeptExample]:
        """:meth:`_read`, from memory after the first time (the objects of the newest
        :data:`READ_CACHE` records are kept)."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        records = self._read(key)
        with self._lock:
            self._cache[key] = records
            self._cached += len(records)
            while self._cached > READ_CACHE and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached -= len(dropped)
        return records

    def _read(self, key: str) -> list[KeptExample]:
        """The records of one object (an unreadable line is logged and skipped)."""
        stored = self._store.get(key)
        if stored is None:
            return []
        out = []
        for line in stored.data.splitlines():
            if not line.strip():
                continue
            try:
                out.append(KeptExample.from_dict(json.loads(line)))
            except (ValueError, InvalidInput):
                log.warning("hard_example_unreadable", key=key)
        return out

    def records(self, task: str, since: float = 0.0) -> Iterator[KeptExample]:
        """Every stored record of ``task`` kept at or after ``since`` (Unix seconds), each
        record id once: agent by agent, by sequence number per agent; records of
        earlier gateways without ids last. Listing is one prefix; an object is read when
        its records are due."""
        if not re.match(NAME_RE, task or ""):
            raise InvalidInput(f"task name {task[:100]!r} is not valid")
        base = f"{self._prefix}{task}/"
        by_agent: dict[str, list[tuple[BatchName, str]]] = {}
        legacy = []
        for key in self._store.list(base):
            agent_id, _, name = key[len(base):].rpartition("/")
            if not agent_id:
                if name.endswith(".jsonl"):
                    legacy.append(key)
                continue
            parsed = BatchName.parse(name)
            if parsed is None or "/" in agent_id:
                continue
            if parsed.newest is not None and parsed.newest < since:
                continue
            by_agent.setdefault(agent_id, []).append((parsed, key))
        for agent_id in sorted(by_agent):
            yield from self._agent_records(by_agent[agent_id], since)
        for key in legacy:
            yield from self._legacy_records(key, since)

    def _agent_records(self, batches: list[tuple[BatchName, str]],
                       since: float) -> Iterator[KeptExample]:
        """One agent's records from its objects by first sequence number; a record held
        twice (racing replicas) is yielded once. Only ids at or above the next object's
        first sequence number can appear again, so only those are remembered."""
        seen: dict[str, int] = {}
        for name, key in sorted(batches, key=lambda b: (b[0].first, b[0].last, b[1])):
            seen = {rid: seq for rid, seq in seen.items() if seq >= name.first}
            for kept in self._read(key):
                if kept.record_id in seen:
                    continue
                seen[kept.record_id] = kept.seq
                if kept.example.at >= since:
                    yield kept

    def _legacy_records(self, key: str, since: float) -> Iterator[KeptExample]:
        """Records of gateways older still: one JSON line each, inputs keyed by name, no
        ids."""
        stored = self._store.get(key)
        if stored is None:
            return
        stem = key.rpartition("/")[2].removesuffix(".jsonl")
        for number, line in enumerate(stored.data.decode("utf-8", "replace").splitlines(), 1):
            try:
                record = json.loads(line)
                inputs = [{"name": name, **t} for name, t in record["inputs"].items()]
                example = HardExample.from_dict({**record, "inputs": inputs})
            except (ValueError, KeyError, TypeError, AttributeError, InvalidInput):
                continue
            if example.at >= since:
                yield KeptExample(f"legacy:{stem}:{number}",
                                  str(record.get("agent_id", "")), 0, example)
