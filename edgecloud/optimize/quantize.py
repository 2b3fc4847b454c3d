"""An int8 variant of an ONNX model, checked and measured beside the original.

The quantization itself is ONNX Runtime's (``onnxruntime.quantization``):

* ``static`` runs ``quantize_static`` in QDQ format with a calibration reader
  over the calibration rows (min/max calibration). Only the inputs and
  weights of MatMul, Gemm, Conv and ConvTranspose nodes are quantized;
  everything after them (in particular a softmax and the model's outputs)
  stays float, so probabilities keep their full resolution for routing
  margins.
* ``dynamic`` runs ``quantize_dynamic``: weights are stored as int8 and
  activations are quantized at run time (MatMul, Conv, Gather, ... as ONNX
  Runtime's integer-op registry lists them; Gemm is not among them).

``per_channel`` gives each output channel of a weight its own scale. Before
quantizing, :mod:`edgecloud.optimize.graph` rewrites ``LinearClassifier``
nodes into standard operators; the rewrite is checked to give the same
outputs, and the report says it happened. When ONNX Runtime ends up storing
no weight as an integer tensor, nothing is written: a file that only adds
quantize/dequantize pairs around float weights would be larger and no faster.

The result is checked before it is written: it must load in
:class:`core.model.OnnxModel` and have the original's signature (input and
output names, datatypes and shapes). It is then measured beside the original
(:mod:`edgecloud.optimize.measure`) on the evaluation rows (default: the
calibration rows, else 256 uniform random rows in [0, 1)): file size, median
latency with 1 row and a 256-row batch, top-1 agreement, the largest absolute
difference over the float outputs, and accuracy when the rows have labels.
The top-1 class is the argmax of the first output when it is ``[N, C]``
scores, or the first output itself when it is a label vector ``[N]`` (as
skl2onnx puts first); accuracy needs integer labels.

The file is written atomically, and only once every check has passed. Every
problem the caller can cause is a :class:`~core.errors.EdgecloudError`:
:class:`~core.errors.InvalidInput` for arguments, files and rows,
:class:`~core.errors.FailedPrecondition` for a model that cannot be quantized
(or not here), :class:`~core.errors.ModelFailure` when a model fails to run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecloud.core.errors import EdgecloudError, FailedPrecondition, InvalidInput
from edgecloud.core.files import atomic_write
from edgecloud.core.model import OnnxModel
from edgecloud.optimize import graph, measure
from edgecloud.optimize.rows import (
    EVAL_CHUNK,
    Rows,
    check_rows_fit,
    chunk_rows,
    chunks,
    fixed_batch,
    random_rows,
    run_rows,
)

if TYPE_CHECKING:
    import onnx

METHODS: tuple[str, ...] = ("static", "dynamic")

CALIBRATION_CHUNK = 64
"""Rows per calibration batch fed to ONNX Runtime."""

# Tolerance of the LinearClassifier rewrite check (float outputs); labels must be equal.
_REWRITE_ATOL = 1e-4


@dataclass(frozen=True)
class ModelFigures:
    """What was measured for one model.

    Attributes:
        size_bytes: size of the ONNX file.
        latency_us: rows per call -> median microseconds of one call (1 and 256 rows, or the
            model's fixed batch size).
        accuracy: share of evaluation rows whose top-1 class equals the label ``y``; None
            without labels or without a top-1 class.
    """

    size_bytes: int
    latency_us: dict[int, float]
    accuracy: float | None


@dataclass(frozen=True)
class QuantizeReport:
    """The outcome of :func:`quantize_model`: what was made and how it compares.

    Attributes:
        source: the original model file.
        output: the quantized model file (written).
        method: ``"static"`` or ``"dynamic"``.
        per_channel: whether weights got one scale per output channel.
        original: figures of the original model.
        quantized: figures of the quantized model.
        agreement: share of evaluation rows whose top-1 class is the same for both models;
            None when the first output gives no top-1 class.
        max_abs_diff: largest absolute difference over all float outputs; None when the
            model has no float outputs.
        eval_rows: number of evaluation rows.
        eval_data: where the evaluation rows came from.
        quantized_tensors: weight tensors now stored as integers.
        quantized_values: elements of those tensors.
        repeats: timed calls per model and batch size.
        notes: what was done to the graph besides quantizing it.
    """

    source: Path
    output: Path
    method: str
    per_channel: bool
    original: ModelFigures
    quantized: ModelFigures
    agreement: float | None
    max_abs_diff: float | None
    eval_rows: int
    eval_data: str
    quantized_tensors: int
    quantized_values: int
    repeats: int
    notes: tuple[str, ...] = ()


def quantize_model(
    src: Path,
    out: Path,
    *,
    calibration: Rows | None,
    method: str,
    per_channel: bool,
    evaluation: Rows | None = None,
    repeats: int = measure.REPEATS,
) -> QuantizeReport:
    """Quantize the ONNX model ``src`` to int8, check it, write it to ``out`` and measure it.

    ``calibration`` holds the rows to calibrate on; ``method="static"`` needs
    them. ``evaluation`` holds the rows to compare the models on; the default
    is ``calibration``, else random rows. Raises
    :class:`~core.errors.EdgecloudError` for anything the caller can fix;
    nothing is written then.
    """
    src, out = Path(src), Path(out)
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == "static" and calibration is None:
        raise InvalidInput("static quantization needs calibration rows to calibrate on")
    if repeats < 1:
        raise InvalidInput("repeats must be at least 1")
    _check_source(src)
    _require_quantizer()

    original = _load(src)
    for rows in (calibration, evaluation):
        if rows is not None:
            check_rows_fit(rows, original)
    eval_rows = evaluation or calibration or random_rows(original)

    prepared, notes = _prepare(src, original, eval_rows)
    blob, quantized_proto = _quantize(src, prepared, original, calibration, method, per_channel)
    tensors, values = graph.quantized_weights(prepared, quantized_proto)
    if tensors == 0:
        raise FailedPrecondition(graph.nothing_to_quantize(src, prepared, method))
    quantized = _load_quantized(blob, src)
    _check_signature(original, quantized)

    outputs_original = run_rows(original, eval_rows.X)
    outputs_quantized = run_rows(quantized, eval_rows.X)
    top1_original = measure.top1(original, outputs_original)
    top1_quantized = measure.top1(quantized, outputs_quantized)
    latencies = measure.latencies(original, quantized, original.inputs[0].name, eval_rows.X,
                                  repeats)

    if len(blob) >= src.stat().st_size:
        notes.append(
            "the quantized file is not smaller than the original: its few weights save less "
            "than the quantization parameters and nodes cost"
        )
    atomic_write(out, blob)
    return QuantizeReport(
        source=src,
        output=out,
        method=method,
        per_channel=per_channel,
        original=ModelFigures(
            size_bytes=src.stat().st_size,
            latency_us={rows: pair[0] for rows, pair in latencies.items()},
            accuracy=measure.accuracy(top1_original, eval_rows.y),
        ),
        quantized=ModelFigures(
            size_bytes=len(blob),
            latency_us={rows: pair[1] for rows, pair in latencies.items()},
            accuracy=measure.accuracy(top1_quantized, eval_rows.y),
        ),
        agreement=measure.agreement(top1_original, top1_quantized),
        max_abs_diff=measure.max_abs_diff(outputs_original, outputs_quantized),
        eval_rows=len(eval_rows.X),
        eval_data=eval_rows.source,
        quantized_tensors=tensors,
        quantized_values=values,
        repeats=repeats,
        notes=tuple(notes),
    )


def _require_quantizer() -> None:
    """ONNX Runtime's quantizer imports ``onnx``, which is only a dependency of this package."""
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        raise FailedPrecondition(
            f"quantization needs the '{exc.name}' package (pip install onnx)"
        ) from None


def _check_source(src: Path) -> None:
    if not src.exists():
        raise InvalidInput(f"model file {src} does not exist")
    if not src.is_file():
        raise InvalidInput(f"model {src} is not a file")


def _load(src: Path) -> OnnxModel:
    model = OnnxModel.load(src, name=src.stem)
    if len(model.inputs) != 1:
        names = ", ".join(spec.name for spec in model.inputs)
        raise InvalidInput(
            f"{src} takes {len(model.inputs)} inputs ({names}); quantization handles "
            f"models with exactly one input, which an .npz array X can feed"
        )
    return model


def _prepare(src: Path, original: OnnxModel, rows: Rows) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the graph the quantizer accepts, checked, and notes on what was changed."""
    import onnx

    try:
        source_proto = onnx.load(str(src))
    except Exception:
        raise InvalidInput(f"cannot read {src} as an ONNX model") from None
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source_proto)
    notes = graph.merge_opset_imports(prepared)
    rewrites = graph.rewrite_linear_classifiers(prepared)
    if any(note.startswith("rewrote") for note in rewrites):
        _check_rewrite(original, prepared, rows, src)
    notes.extend(rewrites)
    return prepared, notes


def _quantize(
    src: Path,
    prepared: onnx.ModelProto,
    original: OnnxModel,
    calibration: Rows | None,
    method: str,
    per_channel: bool,
) -> tuple[bytes, onnx.ModelProto]:
    """Run ONNX Runtime's quantizer on ``prepared``: the file's bytes and its graph."""
    import onnx
    from onnxruntime import quantization

    with tempfile.TemporaryDirectory(prefix="edgecloud-quantize-") as tmp:
        prepared_path = Path(tmp) / "prepared.onnx"
        quantized_path = Path(tmp) / "quantized.onnx"
        try:
            onnx.save(prepared, str(prepared_path))
            with _quiet_quantizer():
                if method == "static":
                    assert calibration is not None
                    reader = _calibration_reader(quantization, original, calibration)
                    quantization.quantize_static(
                        str(prepared_path), str(quantized_path), reader,
                        quant_format=quantization.QuantFormat.QDQ,
                        op_types_to_quantize=list(graph.STATIC_OP_TYPES),
                        per_channel=per_channel,
                        calibration_providers=["CPUExecutionProvider"],
                    )
                else:
                    quantization.quantize_dynamic(
                        str(prepared_path), str(quantized_path), per_channel=per_channel
                    )
            return quantized_path.read_bytes(), onnx.load(str(quantized_path))
        except Exception as exc:
            raise FailedPrecondition(
                f"ONNX Runtime could not quantize {src} ({method}): {_first_line(exc)}"
            ) from None


def _calibration_reader(quantization, model: OnnxModel, rows: Rows):
    """A ``CalibrationDataReader`` over ``rows.X`` in batches the model accepts."""
    name = model.inputs[0].name
    size = chunk_rows(model, CALIBRATION_CHUNK)
    pad = fixed_batch(model)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: chunk} for chunk, _ in chunks(rows.X, size, pad)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


def _load_quantized(blob: bytes, src: Path) -> OnnxModel:
    try:
        return OnnxModel.from_bytes(blob, name=f"{src.stem}-int8")
    except EdgecloudError as exc:
        raise FailedPrecondition(
            f"the quantized model does not load in OnnxModel ({exc.message}); nothing written"
        ) from None


def _check_signature(original: OnnxModel, quantized: OnnxModel) -> None:
    for what, before, after in (
        ("inputs", original.inputs, quantized.inputs),
        ("outputs", original.outputs, quantized.outputs),
    ):
        if before != after:
            raise FailedPrecondition(
                f"the quantized model's {what} differ from the original's "
                f"({_describe(after)} instead of {_describe(before)}); nothing written"
            )


def _describe(specs) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "none"


def _check_rewrite(original: OnnxModel, prepared: onnx.ModelProto, rows: Rows, src: Path) -> None:
    """The rewritten graph must give the original's outputs before it is quantized."""
    try:
        rewritten = OnnxModel.from_bytes(prepared.SerializeToString(), name=f"{src.stem}-rewritten")
    except EdgecloudError as exc:
        raise FailedPrecondition(
            f"rewriting {src} for quantization gave a model that does not load ({exc.message})"
        ) from None
    X = rows.X[:EVAL_CHUNK]
    before, after = run_rows(original, X), run_rows(rewritten, X)
    for key, value in before.items():
        got = after.get(key)
        if value.dtype.kind == "f":
            same = got is not None and got.shape == value.shape and np.allclose(
                got, value, rtol=0.0, atol=_REWRITE_ATOL
            )
        else:
            same = got is not None and np.array_equal(got, value)
        if not same:
            raise FailedPrecondition(
                f"rewriting the LinearClassifier of {src} as MatMul changed output '{key}'; "
                "this model cannot be quantized here"
            )


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantizer's advice (it logs through the root logger) while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


