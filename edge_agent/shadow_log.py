"""Shadow samples on disk: what the edge said and what the cloud said, per row.

Each shadow-sampled row becomes one JSON line ``{"task", "edge": [...],
"cloud": [...], "model_version", "at"}`` under ``DATA_DIR/shadow/TASK.jsonl``.
Operators collect these files and tune policies from the field with
``edgecloud policy tune --field FILE``. A file past its size limit is
rotated to ``.1`` (one old file is kept), so the log never fills the disk.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


class ShadowLog:
    """Appends shadow records, one file per task, bounded in size."""

    def __init__(self, folder: Path, max_bytes: int = 32 * 2**20) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, task: str) -> Path:
        """The current file of ``task``."""
        return self.folder / f"{task}.jsonl"

    def append(self, task: str, edge: np.ndarray, cloud: np.ndarray, model_version: str) -> None:
        """Write one line per row (blocking: call it from a worker thread)."""
        now = time.time()
        lines = "".join(
            json.dumps({"task": task, "edge": [round(float(v), 7) for v in e],
                        "cloud": [round(float(v), 7) for v in c],
                        "model_version": model_version, "at": now}) + "\n"
            for e, c in zip(np.asarray(edge), np.asarray(cloud), strict=True)
        )
        path = self.path(task)
        try:
            if path.stat().st_size + len(lines) > self.max_bytes:
                os.replace(path, path.with_name(path.name + ".1"))
        except FileNotFoundError:
            pass
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
