"""Hard examples as a data set for relabelling and retraining.

:func:`export_examples` writes two files into a folder:

``examples.npz``
    The inputs, one array per input name, one row per record (``[N, ...]``),
    in the order of the index. BYTES inputs become fixed-width byte strings,
    so the file loads without pickle.
``index.jsonl``
    One JSON line per record, row by row: ``row``, ``record_id``, ``agent_id``,
    ``seq``, ``task``, ``time`` (ISO 8601, UTC) and ``at`` (Unix seconds),
    ``route``, ``reason``, ``confidence``, the edge's answer (``edge_scores``,
    ``edge_class``), the cloud's when there was one (``cloud_scores``,
    ``cloud_class``, else null), and the versions (``model_version``,
    ``policy_version``, ``cloud_model_version``). An export of the labelled rows
    (``labels`` given) writes only the rows a reviewer labelled, each line with
    the reviewer's ``label``, ``reviewer`` and ``labelled_at`` (Unix seconds);
    ``policy tune --field`` reads such an index and tunes on the labels.

Records are ordered by time, then agent and sequence number. Both files are
written to temporary names and renamed, so a folder never holds half an export.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.cloud_gateway.review import Label
from edgecloud.core.errors import InvalidInput
from edgecloud.core.hard_examples import KeptExample

EXAMPLES_FILE = "examples.npz"
INDEX_FILE = "index.jsonl"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    records: int
    shapes: dict[str, tuple[int, ...]]
    """Input name -> shape of its array in ``examples.npz``."""
    examples_path: Path
    index_path: Path


def export_examples(records: Iterable[KeptExample], out: Path,
                    labels: Mapping[str, Label] | None = None) -> ExportSummary:
    """Write ``records`` to ``out/examples.npz`` and ``out/index.jsonl``; with ``labels``
    (reviewers' labels by record id), only the labelled records, with their labels.

    Raises InvalidInput when the records disagree on an input's datatype or
    shape (a task whose signature changed: export a narrower ``since``).
    """
    if labels is not None:
        records = (k for k in records if k.record_id in labels)
    kept = sorted(records, key=lambda k: (k.example.at, k.agent_id, k.seq))
    columns: dict[str, list[np.ndarray]] = {}
    lines = []
    for row, record in enumerate(kept):
        example = record.example
        for tensor in example.inputs:
            columns.setdefault(tensor.name, []).append(tensor.array())
        line = _index_line(row, record)
        if labels is not None:
            given = labels[record.record_id]
            line.update(label=given.label, reviewer=given.reviewer,
                        labelled_at=given.labelled_at)
        lines.append(json.dumps(line, allow_nan=False))
    arrays = {name: _stack(name, rows) for name, rows in columns.items()}
    for name, array in arrays.items():
        if array.shape[0] != len(kept):
            raise InvalidInput(f"input {name!r} is missing from some records "
                               f"({array.shape[0]} of {len(kept)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples_path, index_path = out / EXAMPLES_FILE, out / INDEX_FILE
    _write_atomic(examples_path, lambda f: np.savez(f, **arrays))
    _write_atomic(index_path,
                  lambda f: f.write("".join(line + "\n" for line in lines).encode("utf-8")))
    return ExportSummary(len(kept), {n: a.shape for n, a in arrays.items()}, examples_path,
                         index_path)


def _index_line(row: int, record: KeptExample) -> dict:
    e = record.example
    cloud = e.cloud_scores
    return {
        "row": row, "record_id": record.record_id, "agent_id": record.agent_id,
        "seq": record.seq, "task": e.task,
        "time": dt.datetime.fromtimestamp(e.at, dt.UTC).isoformat().replace("+00:00", "Z"),
        "at": e.at, "route": e.route, "reason": e.reason, "confidence": _finite(e.confidence),
        "edge_scores": [_finite(v) for v in e.edge_scores], "edge_class": _argmax(e.edge_scores),
        "cloud_scores": None if cloud is None else [_finite(v) for v in cloud],
        "cloud_class": None if cloud is None else _argmax(cloud),
        "model_version": e.model_version, "policy_version": e.policy_version,
        "cloud_model_version": e.cloud_model_version,
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if math.isfinite(value) else None


def _argmax(scores: tuple[float, ...]) -> int | None:
    """The first class with the top score (NaN ignored); None when there is none."""
    best = None
    for i, v in enumerate(scores):
        if not math.isnan(v) and (best is None or v > scores[best]):
            best = i
    return best


def _stack(name: str, rows: list[np.ndarray]) -> np.ndarray:
    first = rows[0]
    for row in rows:
        if row.dtype != first.dtype or row.shape[1:] != first.shape[1:]:
            raise InvalidInput(
                f"input {name!r} has rows of {first.dtype}{list(first.shape[1:])} and "
                f"{row.dtype}{list(row.shape[1:])}; export records of one signature "
                "(narrow --since)"
            )
    array = np.concatenate(rows, axis=0)
    if array.dtype == object:  # BYTES: fixed-width byte strings, loadable without pickle
        array = np.array([bytes(v) for v in array.ravel()], dtype=np.bytes_).reshape(
            array.shape)
    return array


def _write_atomic(path: Path, write) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
