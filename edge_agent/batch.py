"""Batch mode: route a whole file of inputs, escalating hard rows in batches.

``edgecloud agent batch`` reads an ``.npz`` file, runs the edge model chunk
by chunk, sends each chunk's hard rows to the gateway in one call and writes
one JSON line per row. It uses the same :class:`EdgeService` as the server,
so a row is routed exactly as the live agent would route it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.core.datasets import read_npz
from edgecloud.core.errors import InvalidInput
from edgecloud.core.model import rows_per_run
from edgecloud.core.tensors import InferRequest
from edgecloud.edge_agent.service import EdgeService
from edgecloud.router import Route

CHUNK_TIME_BUDGET_S = 30.0
"""Deadline of one chunk (local run plus one escalation) in batch mode."""
DEFAULT_CHUNK_ROWS = 256
"""Rows routed per chunk when the edge model takes any number."""


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a batch run did."""

    rows: int
    edge: int
    cloud: int
    fallback: int
    accuracy: float | None
    """Share of rows whose predicted class equals the file's ``y``, when it has one."""

    @property
    def escalation_rate(self) -> float:
        """Share of rows sent to the cloud (answered there or not)."""
        return (self.cloud + self.fallback) / self.rows if self.rows else 0.0


def read_inputs(path: Path, input_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The input array (key ``X`` or the model input's name) and labels ``y`` if present."""
    return read_npz(path, "--input", x_keys=(input_name, "X"))


async def run_batch(
    service: EdgeService,
    task_name: str,
    input_path: Path,
    output_path: Path,
    *,
    chunk_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Route every row of ``input_path`` and write JSON lines to ``output_path``.

    Rows go in chunks of ``chunk_rows`` (default 256); an edge model whose
    input fixes the batch dimension (an export with batch 1) gets chunks of
    exactly that size, and a ``chunk_rows`` that differs from it is refused.
    The output is written to a temporary file and renamed at the end, so a
    failed run leaves no half-written result. Text outputs (class labels)
    are written as strings.
    """
    task = service.task(task_name)
    model = task.current.model
    if len(model.inputs) != 1:
        raise InvalidInput(f"batch mode needs a single-input model; {task_name!r} has "
                           f"{len(model.inputs)}")
    spec = model.inputs[0]
    chunk_rows = rows_per_run(model, chunk_rows, DEFAULT_CHUNK_ROWS,
                              f"the edge model of {task_name!r}")
    x, y = read_inputs(input_path, spec.name)
    total = int(x.shape[0]) if x.ndim else 0
    if model.fixed_batch_size is not None and total % chunk_rows:
        raise InvalidInput(f"the edge model of {task_name!r} takes exactly {chunk_rows} rows "
                           f"per run; {input_path} has {total} rows, not a multiple of it")
    counts = {Route.EDGE: 0, Route.CLOUD: 0, Route.EDGE_FALLBACK: 0}
    correct = 0
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".partial")
    # Line writes to a local file are short; the model runs dominate.
    with open(tmp, "w", encoding="utf-8") as out:  # noqa: ASYNC230
        for start in range(0, total, chunk_rows):
            chunk = x[start:start + chunk_rows]
            answer = await service.answer(
                InferRequest(model_name=task_name, inputs={spec.name: chunk}),
                CHUNK_TIME_BUDGET_S,
            )
            predicted = np.argmax(answer.scores, axis=1)
            routing = answer.routing
            confidence = routing.confidence.tolist()
            for offset, (route, reason) in enumerate(zip(routing.routes(), routing.reasons(),
                                                         strict=True)):
                row = start + offset
                counts[route] += 1
                record = {
                    "row": row,
                    "prediction": int(predicted[offset]),
                    "route": route.value,
                    "reason": reason.value,
                    "confidence": round(confidence[offset], 6),
                    "outputs": {k: _plain(v[offset]) for k, v in answer.outputs.items()},
                }
                if y is not None:
                    record["label"] = int(y[row])
                    correct += int(y[row] == predicted[offset])
                out.write(json.dumps(record) + "\n")
            if progress is not None:
                progress(min(start + chunk_rows, total), total)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output_path)
    return BatchSummary(
        rows=total,
        edge=counts[Route.EDGE],
        cloud=counts[Route.CLOUD],
        fallback=counts[Route.EDGE_FALLBACK],
        accuracy=(correct / total if y is not None and total else None),
    )


def _plain(value: np.ndarray) -> object:
    """One row of an output as JSON data; text (BYTES) elements become strings."""
    value = np.asarray(value)
    return value.tolist() if value.dtype != object else _text(value.tolist())


def _text(item: object) -> object:
    if isinstance(item, list):
        return [_text(element) for element in item]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else item
