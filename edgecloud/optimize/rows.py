"""Rows to feed a one-input model: read from ``.npz``, made up, cut into batches, run.

Every function here works on models with exactly one input, which an array
``X`` feeds; a model that fixes its batch dimension gets batches of exactly
that many rows (the last one padded by repeating its final row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.core.datasets import read_npz
from edgecloud.core.errors import EdgecloudError, InvalidInput, ModelFailure
from edgecloud.core.model import OnnxModel

BATCH_ROWS = 256
"""Rows of the batched latency call, and of the random rows made when no data is given."""

EVAL_CHUNK = 1024
"""Rows per call when computing a model's outputs over many rows."""


@dataclass(frozen=True)
class Rows:
    """Rows for a one-input model: ``X``, optional integer labels ``y``, and their origin.

    Attributes:
        X: the model input, one row per sample.
        y: integer class labels, one per row of ``X``; None without labels.
        source: where the rows came from (a file name, or how they were made).
        what: names the rows in messages, as :func:`core.datasets.read_npz` does
            (a flag such as ``--calibration``).
    """

    X: np.ndarray
    y: np.ndarray | None = None
    source: str = "given rows"
    what: str = "rows"


def read_rows(path: Path, what: str) -> Rows:
    """``X`` (and ``y`` when present) from an ``.npz`` file; ``what`` names it in messages.

    Raises :class:`~core.errors.InvalidInput` for anything
    :func:`core.datasets.read_npz` refuses.
    """
    X, y = read_npz(path, what)
    return Rows(X=X, y=y, source=str(path), what=what)


def check_rows_fit(rows: Rows, model: OnnxModel) -> None:
    """Raise :class:`~core.errors.InvalidInput` unless the model accepts batches of ``rows.X``."""
    first, _ = next(chunks(rows.X, chunk_rows(model, EVAL_CHUNK), fixed_batch(model)))
    try:
        model.validate_inputs({model.inputs[0].name: first})
    except InvalidInput as exc:
        raise InvalidInput(
            f"{rows.what}: X in {rows.source} (shape {list(rows.X.shape)}, {rows.X.dtype}) "
            f"does not fit the model: {exc.message}"
        ) from None


def random_rows(model: OnnxModel) -> Rows:
    """Uniform [0, 1) rows for a float input whose dimensions (batch aside) are fixed."""
    spec = model.inputs[0]
    fixed = spec.shape[1:]
    if not spec.shape or any(dim < 0 for dim in fixed) or spec.datatype not in (
        "FP16", "FP32", "FP64",
    ):
        raise InvalidInput(
            f"cannot make sample rows for input '{spec.name}' ({spec.datatype} "
            f"{list(spec.shape)}); give rows to measure on (evaluation or calibration rows)"
        )
    batch = fixed_batch(model) or BATCH_ROWS
    rng = np.random.default_rng(0)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[spec.datatype]
    X = rng.random((batch, *fixed)).astype(dtype)
    return Rows(X=X, y=None, source="random, uniform in [0, 1), no labels", what="random rows")


def fixed_batch(model: OnnxModel) -> int | None:
    """The input's first dimension when the model fixes it, else None."""
    return model.fixed_batch_size


def chunk_rows(model: OnnxModel, wanted: int) -> int:
    """Rows per call: the model's fixed batch size, else ``wanted``."""
    return fixed_batch(model) or wanted


def chunks(X: np.ndarray, size: int, pad: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """Slices of ``size`` rows and their real row counts; padded to ``pad`` rows if given."""
    for start in range(0, len(X), size):
        part = X[start : start + size]
        real = len(part)
        if pad is not None and real < pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad - real, axis=0)])
        yield np.ascontiguousarray(part), real


def run_rows(model: OnnxModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of ``model`` over every row of ``X``.

    Raises :class:`~core.errors.ModelFailure` when the model cannot run on them.
    """
    name = model.inputs[0].name
    parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in model.outputs}
    try:
        for chunk, real in chunks(X, chunk_rows(model, EVAL_CHUNK), fixed_batch(model)):
            for key, value in model.run({name: chunk}).items():
                parts[key].append(value[:real] if value.ndim else value)
    except EdgecloudError as exc:
        raise ModelFailure(f"running {model.name} failed: {exc.message}") from None
    return {key: np.concatenate(values) if values[0].ndim else values[0]
            for key, values in parts.items()}
