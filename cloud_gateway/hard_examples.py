"""The gateway's hard-example store: one file per record, named by the record's id.

Layout under its root (the registry's ``hard_examples/``)::

    <task>/<agent id>/<seq, 20 digits>.<hash>.json   one record, immutable
    <task>/*.jsonl                                   records of earlier gateways (no ids),
                                                     read for export, never written

Storing by id makes a resend harmless: a record whose file exists is counted
as a duplicate and not written again, so every record is kept once however
often an agent sends it (after a lost acknowledgement, or a SIGKILL of either
side). Each file is written to a temp file, fsynced and renamed, and the
directories are fsynced before the upload is acknowledged: a crash leaves a
record whole or absent, and an absent record is still in the agent's ledger.
Replicas sharing the registry may store the same record at once; both write
the same bytes under the same name.

Every record is checked before anything is written: its id must be its own
(this agent, its sequence number, its content hash), its task a valid name,
its inputs within ``max_record_bytes`` and decodable. A record that fails is
refused alone, with a reason, and the agent quarantines it. Each agent has a
disk quota (``agent_quota_bytes``); an upload that would pass it is refused
with RESOURCE_EXHAUSTED and stays in the agent's ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from edgecloud.core.artifacts import NAME_RE
from edgecloud.core.errors import InvalidInput, Overloaded
from edgecloud.core.files import atomic_write
from edgecloud.core.hard_examples import AGENT_ID_RE, HardExample, KeptExample

log = structlog.get_logger("edgecloud.gateway.hard")

READ_CACHE = 4096
"""Records :meth:`HardExampleStore.recent` keeps after reading them."""
_USAGE_TTL_S = 60.0
"""How long an agent's disk usage is trusted before it is summed again (other replicas
write to the same registry)."""


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What became of one upload."""

    stored: int
    """Records written now."""
    duplicates: int
    """Records already held (resent)."""
    rejected: tuple[tuple[str, str], ...]
    """``(record id, reason)`` of the records refused."""


class HardExampleStore:
    """Hard examples by task, agent and record id, in a directory."""

    def __init__(self, root: Path, *, max_record_bytes: int = 4 * 2**20,
                 agent_quota_bytes: int = 2**30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.max_record_bytes = max_record_bytes
        self.agent_quota_bytes = agent_quota_bytes
        self._clock = clock
        self._usage: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._read: OrderedDict[Path, KeptExample] = OrderedDict()
        """Records :meth:`recent` read lately, by file (a stored record never changes)."""

    def _path(self, kept: KeptExample) -> Path:
        digest = kept.record_id.rpartition(".")[2]
        return (self.root / kept.example.task / kept.agent_id
                / f"{kept.seq:020d}.{digest}.json")

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
        new: dict[Path, bytes] = {}
        for kept in records:
            problem = self.problem(agent_id, kept)
            if problem is not None:
                rejected.append((kept.record_id, problem))
                continue
            path = self._path(kept)
            if path in new or path.exists():
                duplicates += 1
                continue
            new[path] = json.dumps(kept.to_dict(), sort_keys=True).encode()
        size = sum(len(data) for data in new.values())
        with self._lock:
            used = self._used(agent_id)
            if new and used + size > self.agent_quota_bytes:
                raise Overloaded(
                    f"agent {agent_id} has used {used} of its {self.agent_quota_bytes}-byte "
                    f"quota for hard examples; this upload needs {size} more"
                )
            self._usage[agent_id] = (used + size, self._usage[agent_id][1])
        try:
            for path, data in new.items():
                atomic_write(path, data, make_parents=True)
        except BaseException:
            with self._lock:
                self._usage.pop(agent_id, None)  # summed again on the next upload
            raise
        for directory in {path.parent.parent for path in new}:
            _fsync_dir(directory)  # a new agent folder's entry (files: atomic_write)
        if rejected:
            log.warning("hard_examples_rejected", agent_id=agent_id, count=len(rejected),
                        reason=rejected[0][1])
        return StoreOutcome(len(new), duplicates, tuple(rejected))

    def usage(self, agent_id: str) -> int:
        """Bytes of ``agent_id``'s stored records (summed at most once a minute)."""
        with self._lock:
            return self._used(agent_id)

    def _used(self, agent_id: str) -> int:
        now = self._clock()
        cached = self._usage.get(agent_id)
        if cached is not None and now - cached[1] < _USAGE_TTL_S:
            return cached[0]
        total = 0
        for path in self.root.glob(f"*/{_glob_escape(agent_id)}/*.json"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        self._usage[agent_id] = (total, now)
        return total

    def records(self, task: str, since: float = 0.0) -> Iterator[KeptExample]:
        """Every stored record of ``task`` kept at or after ``since`` (Unix seconds),
        agent by agent, oldest first per agent; records of earlier gateways last."""
        if not re.match(NAME_RE, task or ""):
            raise InvalidInput(f"task name {task[:100]!r} is not valid")
        base = self.root / task
        if not base.is_dir():
            return
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.json")):
                try:
                    kept = KeptExample.from_dict(json.loads(path.read_bytes()))
                except (OSError, ValueError, InvalidInput):
                    log.warning("hard_example_unreadable", path=str(path))
                    continue
                if kept.example.at >= since:
                    yield kept
        yield from _legacy_records(base, since)

    def recent(self, limit: int) -> list[KeptExample]:
        """The ``limit`` newest records of every task (by the time the agent kept them),
        newest first. Reads at most ``limit`` files per task and agent: each agent's
        newest by their sequence numbers."""
        if limit < 1 or not self.root.is_dir():
            return []
        found: list[KeptExample] = []
        for task in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder in sorted(p for p in task.iterdir() if p.is_dir()):
                for path in sorted(folder.glob("*.json"))[-limit:]:
                    kept = self._read_once(path)
                    if kept is not None:
                        found.append(kept)
        found.sort(key=lambda kept: kept.example.at, reverse=True)
        return found[:limit]

    def _read_once(self, path: Path) -> KeptExample | None:
        """The record in ``path``, read from disk the first time only (the newest
        :data:`READ_CACHE` are kept)."""
        with self._lock:
            if path in self._read:
                self._read.move_to_end(path)
                return self._read[path]
        try:
            kept = KeptExample.from_dict(json.loads(path.read_bytes()))
        except (OSError, ValueError, InvalidInput):
            log.warning("hard_example_unreadable", path=str(path))
            return None
        with self._lock:
            self._read[path] = kept
            while len(self._read) > READ_CACHE:
                self._read.popitem(last=False)
        return kept


def _legacy_records(base: Path, since: float) -> Iterator[KeptExample]:
    """Records of earlier gateways: one JSON line each, inputs keyed by name, no ids."""
    for path in sorted(base.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                inputs = [{"name": name, **t} for name, t in record["inputs"].items()]
                example = HardExample.from_dict({**record, "inputs": inputs})
            except (ValueError, KeyError, TypeError, AttributeError, InvalidInput):
                continue
            if example.at >= since:
                yield KeptExample(f"legacy:{path.stem}:{number}",
                                  str(record.get("agent_id", "")), 0, example)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
