"""The tuner's data: class scores of the edge and cloud models, and shadow samples from the field.

:func:`edgecloud.router.tune` works on ``[N, K]`` class scores; this module
makes them. :func:`load_scoring_model` opens a model that takes one numeric
input, :func:`scores_output` and :func:`cloud_scores_output` find the outputs
that hold class scores (as the agent would), :func:`class_scores` runs a
model over the rows in chunks (of the model's fixed batch size, when its
input has one), and :func:`check_classes` checks that both models score the
same classes and that the labels are among them. :func:`read_field_records` reads the shadow
samples an agent logged (``edge_agent.shadow_log``), one JSON object
``{"edge": [K scores], "cloud": [K scores]}`` per line, for
:func:`edgecloud.router.tune_from_field`.

Like :func:`core.datasets.read_npz`, the functions take ``what``, the name of
the source in messages (a flag such as ``--edge``). Every problem with the
files or the models is a :class:`~core.errors.InvalidInput`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecloud.core.errors import EdgecloudError, FailedPrecondition, InvalidInput
from edgecloud.core.model import OnnxModel, rows_per_run
from edgecloud.core.tensors import V2_TO_NUMPY, class_scores_output, holds_class_scores

DEFAULT_CHUNK_ROWS = 1024
"""Rows per model run when the model takes any number."""

FieldRecord = tuple[list[float], list[float]] | tuple[list[float], list[float], int]
"""``(edge scores, cloud scores)``, or with a reviewer's label as a third item."""
"""One shadow sample: the edge's class scores and the cloud's."""


def load_scoring_model(path: Path, role: str, what: str) -> OnnxModel:
    """The ``role`` model (``edge`` or ``cloud``) at ``path``; it must take one numeric input."""
    if not path.is_file():
        raise InvalidInput(f"{what}: file {path} does not exist")
    model = OnnxModel.load(path, name=role)
    if len(model.inputs) != 1:
        names = ", ".join(spec.name for spec in model.inputs)
        raise InvalidInput(f"{what} model {path} takes {len(model.inputs)} inputs ({names}); "
                           "the tuner feeds X to a model with exactly one input")
    if model.inputs[0].datatype == "BYTES":
        raise InvalidInput(f"{what} model {path} takes strings; the tuner feeds numeric X")
    return model


def scores_output(model: OnnxModel, what: str, wanted: str | None) -> str:
    """The output holding class scores: ``wanted`` (``--scores-output`` or a policy's
    ``scores_output``), else the model's one float ``[N, classes]`` output.

    The message of a model with none (or several) names its outputs, and says
    how to export a scikit-learn model whose probabilities are a sequence of maps.
    """
    try:
        return class_scores_output(model.outputs, wanted, owner=f"{what} model",
                                   skipped=model.skipped_outputs)
    except FailedPrecondition as exc:
        raise InvalidInput(exc.message) from None


def cloud_scores_output(cloud: OnnxModel, edge: OnnxModel, edge_output: str, what: str) -> str:
    """The cloud model's output that answers for the edge's ``edge_output``.

    The agent maps the cloud's outputs onto the edge's by position, so it is
    the output at the same position when both have as many outputs and it
    holds class scores; otherwise the cloud model's one float ``[N, classes]`` output.
    """
    position = [spec.name for spec in edge.outputs].index(edge_output)
    if len(cloud.outputs) == len(edge.outputs) and holds_class_scores(cloud.outputs[position]):
        return cloud.outputs[position].name
    return scores_output(cloud, what, None)


def chunk_rows_for(model: OnnxModel, wanted: int | None, what: str) -> int:
    """Rows per run: the model's fixed batch size if it has one, else ``wanted`` (or 1024)."""
    return rows_per_run(model, wanted, DEFAULT_CHUNK_ROWS, f"{what} model")


def class_scores(
    model: OnnxModel,
    x: np.ndarray,
    output: str,
    *,
    role: str,
    source: str,
    chunk_rows: int,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[N, K]`` class scores of ``model``'s ``output`` over the rows of ``x``.

    The rows go in chunks of ``chunk_rows``; ``advance`` hears how many rows
    each chunk held. ``role`` (``edge`` or ``cloud``) and ``source`` (where
    ``x`` came from) name the model and the data in messages. A model with a
    fixed batch size takes exactly that many rows per run (see
    :func:`chunk_rows_for`): a last, shorter chunk is padded by repeating its
    last row, and the padding's scores are dropped.
    """
    spec = model.inputs[0]
    feed = x.astype(V2_TO_NUMPY[spec.datatype], copy=False)
    fixed = model.fixed_batch_size
    parts: list[np.ndarray] = []
    for start in range(0, x.shape[0], chunk_rows):
        chunk = feed[start:start + chunk_rows]
        rows = len(chunk)
        if fixed is not None and rows < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - rows, axis=0)])
        try:
            out = model.run({spec.name: chunk}, [output])[output][:rows]
        except EdgecloudError as exc:
            raise InvalidInput(f"the {role} model cannot run on {source}: "
                               f"{exc.message}") from None
        if out.ndim != 2 or out.shape[0] != rows or out.dtype.kind not in "biuf":
            raise InvalidInput(
                f"the {role} model's output {output!r} has shape "
                f"{list(out.shape)} ({out.dtype}); the tuner needs class scores [N, K]"
            )
        parts.append(out)
        if advance is not None:
            advance(rows)
    return np.concatenate(parts)


def check_classes(edge: np.ndarray, cloud: np.ndarray, y: np.ndarray, what: str) -> None:
    """Both models score the same classes, and the labels ``y`` (from ``what``) are among them."""
    if edge.shape[1] != cloud.shape[1]:
        raise InvalidInput(f"the edge model scores {edge.shape[1]} classes but the cloud model "
                           f"{cloud.shape[1]}; they must share the classes")
    if y.min() < 0 or y.max() >= edge.shape[1]:
        raise InvalidInput(f"{what}: y holds classes {y.min()}..{y.max()}, but the "
                           f"models score {edge.shape[1]} classes (0..{edge.shape[1] - 1})")


def read_field_records(path: Path, what: str) -> list[FieldRecord]:
    """The field rows in ``path``, one ``{"edge": [...], "cloud": [...]}`` per line (an
    agent's shadow log), or the index lines of ``examples export`` (``edge_scores``,
    ``cloud_scores``; with ``--labelled``, a reviewer's ``label``).

    A line's ``label``, when it has one, is a reviewer's and replaces the cloud's answer
    as the row's truth. Blank lines are skipped; every record must hold the same number of
    classes on both sides, and the file at least one record.
    """
    if not path.is_file():
        raise InvalidInput(f"{what}: file {path} does not exist")
    records: list[FieldRecord] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    record = _field_record(line, f"{what} {path} line {number}")
                    if records and len(record[0]) != len(records[0][0]):
                        raise InvalidInput(
                            f"{what} {path} line {number}: {len(record[0])} classes, but "
                            f"earlier lines have {len(records[0][0])}"
                        )
                    records.append(record)
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot read {path}: {exc.strerror}") from None
    if not records:
        raise InvalidInput(f"{what} {path} holds no records")
    return records


def _field_record(line: str, where: str) -> FieldRecord:
    """One line of a shadow log as ``(edge scores, cloud scores)``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not JSON ({exc.msg})") from None
    if isinstance(record, dict) and "edge" not in record and "edge_scores" in record:
        record = {**record, "edge": record["edge_scores"], "cloud": record.get("cloud_scores")}
    if not isinstance(record, dict) or "edge" not in record or "cloud" not in record:
        raise InvalidInput(f'{where}: expected an object with "edge" and "cloud" lists')
    pair = []
    for key in ("edge", "cloud"):
        values = record[key]
        if values is None and key == "cloud":
            raise InvalidInput(f"{where}: the row has no cloud answer")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise InvalidInput(f'{where}: "{key}" must be a non-empty list of numbers')
        pair.append(values)
    if len(pair[0]) != len(pair[1]):
        raise InvalidInput(f"{where}: edge has {len(pair[0])} scores but cloud has "
                           f"{len(pair[1])}")
    label = record.get("label")
    if label is None:
        return pair[0], pair[1]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(pair[0]):
        raise InvalidInput(f"{where}: label {label!r} is not one of the {len(pair[0])} classes")
    return pair[0], pair[1], label
