"""Hard examples: rows the edge model was unsure of, kept for relabelling.

Rows the router escalated for low confidence are buffered in memory on the
request path (a list append), written to ``DATA_DIR/hard/pending.jsonl`` off
it, and uploaded to the gateway in batches. A batch is claimed by renaming
the file, and deleted only after the gateway acknowledged it, so a crash or a
lost connection loses nothing; the spool is bounded in size and memory.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from edgecloud.core.tensors import v2_datatype

log = structlog.get_logger("edgecloud.agent.hard")


@dataclass(frozen=True, slots=True)
class HardExample:
    """One row, what the edge said about it and what the cloud said."""

    task: str
    model_version: str
    inputs: dict[str, np.ndarray]
    edge_scores: list[float]
    cloud_scores: list[float] | None
    route: str
    reason: str
    confidence: float
    at: float

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps({
            "task": self.task, "model_version": self.model_version,
            "inputs": {name: {"datatype": v2_datatype(a.dtype), "shape": list(a.shape),
                              "data": base64.b64encode(
                                  np.ascontiguousarray(a).tobytes()).decode()}
                       for name, a in self.inputs.items()},
            "edge_scores": self.edge_scores, "cloud_scores": self.cloud_scores,
            "route": self.route, "reason": self.reason, "confidence": self.confidence,
            "at": self.at,
        })


class HardExampleSpool:
    """Buffer in memory, spool on disk, hand out batches for upload."""

    def __init__(self, folder: Path, *, max_bytes: int = 64 * 2**20,
                 max_buffered: int = 10_000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_buffered = max_buffered
        self._buffer: list[HardExample] = []
        self.dropped = 0
        """Examples dropped because the buffer or the spool was full."""

    def add(self, example: HardExample) -> None:
        """Keep one example (request path: no I/O)."""
        if len(self._buffer) >= self.max_buffered:
            self.dropped += 1
            return
        self._buffer.append(example)

    def flush(self) -> int:
        """Write buffered examples to the pending file (blocking); returns how many."""
        items, self._buffer = self._buffer, []
        if not items:
            return 0
        if self._spooled_bytes() > self.max_bytes:
            self.dropped += len(items)
            log.warning("hard_examples_dropped", count=len(items), reason="spool full")
            return 0
        with open(self.folder / "pending.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(item.to_json() + "\n" for item in items))
            f.flush()
            os.fsync(f.fileno())
        return len(items)

    def _spooled_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.jsonl"))

    def claim(self) -> Iterator[tuple[Path, list[dict]]]:
        """Batches to upload, oldest first: (file, records). Delete with :meth:`done`."""
        pending = self.folder / "pending.jsonl"
        if pending.exists():
            os.replace(pending, self.folder / f"uploading-{time.time_ns()}.jsonl")
        for path in sorted(self.folder.glob("uploading-*.jsonl")):
            records = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line after a crash
            yield path, records

    @staticmethod
    def done(path: Path) -> None:
        """The gateway has the batch: forget it."""
        path.unlink(missing_ok=True)
