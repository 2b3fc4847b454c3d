"""``edgecloud models quantize``: an int8 variant of an ONNX model, measured beside the original.

The quantization itself is ONNX Runtime's (``onnxruntime.quantization``):

* ``static`` (the default when ``--calibration`` is given) runs ``quantize_static`` in QDQ
  format with a calibration reader over the rows of the ``X`` array of a ``.npz`` file
  (min/max calibration). Only the inputs and weights of MatMul, Gemm, Conv and ConvTranspose
  nodes are quantized; everything after them (in particular a softmax and the model's
  outputs) stays float, so probabilities keep their full resolution for routing margins.
* ``dynamic`` (the default without ``--calibration``) runs ``quantize_dynamic``: weights are
  stored as int8 and activations are quantized at run time (MatMul, Conv, Gather, ... as
  ONNX Runtime's integer-op registry lists them; Gemm is not among them).

``--per-channel`` gives each output channel of a weight its own scale.

Models converted from scikit-learn by skl2onnx often keep their weights in the attributes
of ``ai.onnx.ml`` operators, which the quantizer never looks at. A ``LinearClassifier``
that reads a float ``[N, F]`` tensor (logistic regression, linear SVM) is therefore first
rewritten as the equivalent ``MatMul + Add`` (+ ``Softmax`` or ``Sigmoid``, and ``ArgMax +
Gather`` when its label output is used); the rewrite is checked to give the same outputs
before anything is quantized, and the report says it happened. Other ``ai.onnx.ml``
operators (``SVMClassifier``, tree ensembles, ...) are left alone. When ONNX Runtime ends
up storing no weight as an integer tensor, the command says "nothing to quantize" and
writes nothing: a file that only adds quantize/dequantize pairs around float weights would
be larger and no faster.

The result is checked before it is written: it must load in :class:`core.model.OnnxModel`
and have the original's signature (input and output names, datatypes and shapes). It is
then measured beside the original in the same process, on the ``--eval`` rows (default:
the calibration rows, else 256 uniform random rows in [0, 1)):

* size of the file in bytes;
* latency: median microseconds of one ``run`` call with 1 row and with a 256-row batch,
  one intra-op thread, calls alternating between the two models after a warmup;
* top-1 agreement with the original and the largest absolute difference over the float
  outputs; accuracy when the data has labels ``y``. The top-1 class is the argmax of the
  first output when it is ``[N, C]`` scores, or the first output itself when it is a label
  vector ``[N]`` (as skl2onnx puts first); accuracy needs integer labels.

The file is written atomically (a temporary file in the same folder, then a rename), and
only once every check has passed. Every problem the user can cause (missing file, not an
ONNX model, ``.npz`` without ``X``, ``X`` that does not fit the model, a quantizer failure)
is an ``edgecloud.cli.CliError``, so the command exits with status 2 and one message.

Quantization needs the ``onnx`` package, which ``onnxruntime.quantization`` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecloud.cli import CliError
from edgecloud.core.datasets import read_npz
from edgecloud.core.errors import EdgecloudError, InvalidInput
from edgecloud.core.files import atomic_write
from edgecloud.core.model import OnnxModel

if TYPE_CHECKING:
    import onnx
    from rich.table import Table

METHODS: tuple[str, ...] = ("static", "dynamic")

BATCH_ROWS = 256
"""Rows of the batched latency call, and of the random rows used when no data is given."""

REPEATS = 300
"""Timed calls per model and batch size."""

WARMUP = 30
"""Untimed calls per model and batch size before the timed ones."""

CALIBRATION_CHUNK = 64
"""Rows per calibration batch fed to ONNX Runtime."""

EVAL_CHUNK = 1024
"""Rows per call when computing the outputs on the evaluation rows."""

STATIC_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Node types whose inputs and weights static quantization touches."""

# Tolerance of the LinearClassifier rewrite check (float outputs); labels must be equal.
_REWRITE_ATOL = 1e-4

# Input positions that hold zero points (not weights) in quantized graphs.
_ZERO_POINT_INPUTS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({2}),
    "DequantizeLinear": frozenset({2}),
    "MatMulInteger": frozenset({2, 3}),
    "ConvInteger": frozenset({2, 3}),
    "QLinearMatMul": frozenset({2, 5, 7}),
    "QLinearConv": frozenset({2, 5, 7}),
}

_ML_DOMAIN = "ai.onnx.ml"
_DEFAULT_OPSET = 13  # for graphs that import no default-domain opset: Softmax over one axis
_POST_TRANSFORMS = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


# --------------------------------------------------------------------------- report


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


@dataclass(frozen=True)
class _Rows:
    """Rows for one-input models: ``X`` and optional labels ``y``."""

    X: np.ndarray
    y: np.ndarray | None
    source: str


# --------------------------------------------------------------------------- the work


def quantize_model(
    src: Path,
    out: Path,
    *,
    calibration: Path | None,
    method: str,
    per_channel: bool,
    evaluation: Path | None = None,
    repeats: int = REPEATS,
) -> QuantizeReport:
    """Quantize the ONNX model ``src`` to int8, check it, write it to ``out`` and measure it.

    ``calibration`` is a ``.npz`` with ``X`` (and optionally ``y``); ``method="static"``
    needs it. ``evaluation`` (same format) gives the rows to compare the models on; the
    default is ``calibration``, else random rows. Raises :class:`edgecloud.cli.CliError`
    for anything the user can fix; nothing is written then.
    """
    src, out = Path(src), Path(out)
    if method not in METHODS:
        raise CliError(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == "static" and calibration is None:
        raise CliError("--method static needs --calibration DATA.npz to calibrate on")
    if repeats < 1:
        raise CliError("repeats must be at least 1")
    _check_paths(src, out)
    onnx, quantization = _import_quantizer()

    original = _load(src)
    input_spec = original.inputs[0]
    calibration_rows = (
        _load_rows(calibration, "--calibration", original) if calibration is not None else None
    )
    if evaluation is not None:
        eval_rows = _load_rows(evaluation, "--eval", original)
    else:
        eval_rows = calibration_rows or _random_rows(original)

    try:
        source_proto = onnx.load(str(src))
    except Exception:
        raise CliError(f"cannot read {src} as an ONNX model") from None
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source_proto)
    notes = _merge_opset_imports(prepared)
    rewrites = _rewrite_linear_classifiers(prepared)
    if any(note.startswith("rewrote") for note in rewrites):
        _check_rewrite(original, prepared, eval_rows, src)
    notes.extend(rewrites)

    with tempfile.TemporaryDirectory(prefix="edgecloud-quantize-") as tmp:
        prepared_path = Path(tmp) / "prepared.onnx"
        quantized_path = Path(tmp) / "quantized.onnx"
        try:
            onnx.save(prepared, str(prepared_path))
            with _quiet_quantizer():
                if method == "static":
                    assert calibration_rows is not None
                    reader = _calibration_reader(quantization, original, calibration_rows)
                    quantization.quantize_static(
                        str(prepared_path), str(quantized_path), reader,
                        quant_format=quantization.QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_OP_TYPES),
                        per_channel=per_channel,
                        calibration_providers=["CPUExecutionProvider"],
                    )
                else:
                    quantization.quantize_dynamic(
                        str(prepared_path), str(quantized_path), per_channel=per_channel
                    )
            blob = quantized_path.read_bytes()
            quantized_proto = onnx.load(str(quantized_path))
        except Exception as exc:
            reason = _first_line(exc)
            raise CliError(
                f"ONNX Runtime could not quantize {src} ({method}): {reason}"
            ) from None

    tensors, values = _quantized_weights(prepared, quantized_proto)
    if tensors == 0:
        raise CliError(_nothing_to_quantize(src, prepared, method))

    try:
        quantized = OnnxModel.from_bytes(blob, name=f"{src.stem}-int8")
    except EdgecloudError as exc:
        raise CliError(
            f"the quantized model does not load in OnnxModel ({exc.message}); nothing written"
        ) from None
    _check_signature(original, quantized)

    outputs_original = _run_rows(original, eval_rows.X)
    outputs_quantized = _run_rows(quantized, eval_rows.X)
    top1_original = _top1(original, outputs_original)
    top1_quantized = _top1(quantized, outputs_quantized)
    agreement = (
        None
        if top1_original is None or top1_quantized is None
        else float(np.mean(top1_original == top1_quantized))
    )
    latencies = _latencies(original, quantized, input_spec.name, eval_rows.X, repeats)

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
            accuracy=_accuracy(top1_original, eval_rows.y),
        ),
        quantized=ModelFigures(
            size_bytes=len(blob),
            latency_us={rows: pair[1] for rows, pair in latencies.items()},
            accuracy=_accuracy(top1_quantized, eval_rows.y),
        ),
        agreement=agreement,
        max_abs_diff=_max_abs_diff(outputs_original, outputs_quantized),
        eval_rows=len(eval_rows.X),
        eval_data=eval_rows.source,
        quantized_tensors=tensors,
        quantized_values=values,
        repeats=repeats,
        notes=tuple(notes),
    )


def _import_quantizer():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as exc:
        raise CliError(
            f"models quantize needs the '{exc.name}' package (pip install onnx)"
        ) from None
    return onnx, quantization


def _check_paths(src: Path, out: Path) -> None:
    if not src.exists():
        raise CliError(f"model file {src} does not exist")
    if not src.is_file():
        raise CliError(f"model {src} is not a file")
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise CliError(f"--out: folder {out.parent} does not exist")
    if out.exists() and out.resolve() == src.resolve():
        raise CliError("--out must not be the model being quantized")


def _load(src: Path) -> OnnxModel:
    try:
        model = OnnxModel.load(src, name=src.stem)
    except InvalidInput as exc:
        raise CliError(exc.message) from None
    if len(model.inputs) != 1:
        names = ", ".join(spec.name for spec in model.inputs)
        raise CliError(
            f"{src} takes {len(model.inputs)} inputs ({names}); models quantize handles "
            f"models with exactly one input, which an .npz array X can feed"
        )
    return model


# --------------------------------------------------------------------------- data


def _load_rows(path: Path, flag: str, model: OnnxModel) -> _Rows:
    """Read ``X`` (and ``y`` if present) from an ``.npz`` and check that ``X`` fits the model."""
    try:
        X, y = read_npz(path, flag)
    except InvalidInput as exc:
        raise CliError(exc.message) from None
    if X.ndim == 0 or len(X) == 0:
        raise CliError(f"{flag}: X in {path} has no rows (shape {list(X.shape)})")
    first, _ = next(_chunks(X, _chunk_rows(model, EVAL_CHUNK), _fixed_batch(model)))
    try:
        model.validate_inputs({model.inputs[0].name: first})
    except InvalidInput as exc:
        raise CliError(
            f"{flag}: X in {path} (shape {list(X.shape)}, {X.dtype}) does not fit the model: "
            f"{exc.message}"
        ) from None
    if y is not None:
        if y.ndim != 1 or len(y) != len(X) or y.dtype.kind not in "iu":
            raise CliError(
                f"{flag}: y in {path} must be integer labels, one per row of X "
                f"(X has {len(X)} rows; y is {y.dtype} with shape {list(y.shape)})"
            )
    return _Rows(X=X, y=y, source=str(path))


def _random_rows(model: OnnxModel) -> _Rows:
    """Uniform [0, 1) rows for a float input whose dimensions (batch aside) are fixed."""
    spec = model.inputs[0]
    fixed = spec.shape[1:]
    if not spec.shape or any(dim < 0 for dim in fixed) or spec.datatype not in (
        "FP16", "FP32", "FP64",
    ):
        raise CliError(
            f"cannot make sample rows for input '{spec.name}' ({spec.datatype} "
            f"{list(spec.shape)}); give rows to measure on with --eval or --calibration DATA.npz"
        )
    batch = _fixed_batch(model) or BATCH_ROWS
    rng = np.random.default_rng(0)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[spec.datatype]
    X = rng.random((batch, *fixed)).astype(dtype)
    return _Rows(X=X, y=None, source="random, uniform in [0, 1), no labels")


def _fixed_batch(model: OnnxModel) -> int | None:
    """The input's first dimension when the model fixes it, else None."""
    shape = model.inputs[0].shape
    return shape[0] if shape and shape[0] >= 0 else None


def _chunk_rows(model: OnnxModel, wanted: int) -> int:
    return _fixed_batch(model) or wanted


def _chunks(X: np.ndarray, size: int, pad: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """Slices of ``size`` rows and their real row counts; padded to ``pad`` rows if given."""
    for start in range(0, len(X), size):
        part = X[start : start + size]
        real = len(part)
        if pad is not None and real < pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad - real, axis=0)])
        yield np.ascontiguousarray(part), real


def _run_rows(model: OnnxModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of ``model`` over every row of ``X``."""
    name = model.inputs[0].name
    parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in model.outputs}
    try:
        for chunk, real in _chunks(X, _chunk_rows(model, EVAL_CHUNK), _fixed_batch(model)):
            for key, value in model.run({name: chunk}).items():
                parts[key].append(value[:real] if value.ndim else value)
    except EdgecloudError as exc:
        raise CliError(f"running {model.name} failed: {exc.message}") from None
    return {key: np.concatenate(values) if values[0].ndim else values[0]
            for key, values in parts.items()}


def _calibration_reader(quantization, model: OnnxModel, rows: _Rows):
    """A ``CalibrationDataReader`` over ``rows.X`` in batches the model accepts."""
    name = model.inputs[0].name
    size = _chunk_rows(model, CALIBRATION_CHUNK)
    pad = _fixed_batch(model)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: chunk} for chunk, _ in _chunks(rows.X, size, pad)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


# --------------------------------------------------------------------------- figures


def _top1(model: OnnxModel, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Top-1 class per row from the first output: argmax of ``[N, C>1]``, or labels ``[N]``."""
    array = outputs[model.outputs[0].name]
    if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind in "fiu":
        return array.argmax(axis=1)
    if array.ndim == 1 and array.dtype.kind in "iuOSU":
        return array
    return None


def _accuracy(top1: np.ndarray | None, y: np.ndarray | None) -> float | None:
    """Share of rows whose top-1 class is ``y``; None without labels or for text labels."""
    if top1 is None or y is None or top1.dtype.kind not in "iu":
        return None
    return float(np.mean(top1 == y))


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float | None:
    diffs = [
        float(np.max(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)), initial=0.0))
        for key in a
        if a[key].dtype.kind == "f"
    ]
    return max(diffs) if diffs else None


def _latencies(
    original: OnnxModel, quantized: OnnxModel, name: str, X: np.ndarray, repeats: int
) -> dict[int, tuple[float, float]]:
    """Rows per call -> (original, quantized) median µs; calls alternate between the models."""
    fixed = _fixed_batch(original)
    sizes = (fixed,) if fixed is not None else (1, BATCH_ROWS)
    models = (original, quantized)
    figures: dict[int, tuple[float, float]] = {}
    for rows in sizes:
        x = np.ascontiguousarray(np.resize(X, (rows, *X.shape[1:])))
        feed = original.validate_inputs({name: x})
        samples: tuple[list[float], list[float]] = ([], [])
        try:
            for _ in range(WARMUP):
                for model in models:
                    model.run(feed, validated=True)
            for i in range(repeats):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    start = time.perf_counter_ns()
                    models[k].run(feed, validated=True)
                    samples[k].append((time.perf_counter_ns() - start) / 1000.0)
        except EdgecloudError as exc:
            raise CliError(f"timing the models failed: {exc.message}") from None
        figures[rows] = (statistics.median(samples[0]), statistics.median(samples[1]))
    return figures


# --------------------------------------------------------------------------- graph checks


def _quantized_weights(before: onnx.ModelProto, after: onnx.ModelProto) -> tuple[int, int]:
    """Integer initializers the quantizer added that hold weights (not zero points)."""
    from onnx import TensorProto

    integer_types = {
        TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
        TensorProto.INT32, TensorProto.INT4, TensorProto.UINT4,
    }
    existing = {init.name for init in before.graph.initializer}
    added = {
        init.name: init
        for init in after.graph.initializer
        if init.data_type in integer_types and init.name not in existing
    }
    weights = set()
    for node in after.graph.node:
        zero_points = _ZERO_POINT_INPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.input):
            if name in added and index not in zero_points:
                weights.add(name)
    values = sum(int(np.prod(added[name].dims, dtype=np.int64)) for name in weights)
    return len(weights), values


def _nothing_to_quantize(src: Path, model: onnx.ModelProto, method: str) -> str:
    nodes = list(model.graph.node)
    ml_ops = sorted({n.op_type for n in nodes if n.domain == _ML_DOMAIN and _holds_weights(n)})
    weight_ops = sorted({n.op_type for n in nodes if n.op_type in STATIC_OP_TYPES})
    if ml_ops:
        reason = (
            f"its weights live in attributes of ai.onnx.ml operators ({', '.join(ml_ops)}), "
            "which ONNX Runtime's quantizer does not touch"
        )
    elif method == "dynamic" and weight_ops == ["Gemm"]:
        reason = (
            "dynamic quantization does not handle Gemm; try --method static with "
            "--calibration DATA.npz"
        )
    elif weight_ops:
        reason = f"its {', '.join(weight_ops)} nodes have no constant float weights to quantize"
    else:
        reason = "it has no MatMul, Gemm or Conv nodes whose weights could be stored as int8"
    return f"nothing to quantize in {src}: {reason}; no file written"


def _holds_weights(node: onnx.NodeProto) -> bool:
    """Whether a node carries float lists or tensors (weights) as attributes."""
    from onnx import AttributeProto

    kinds = (AttributeProto.FLOATS, AttributeProto.TENSOR, AttributeProto.TENSORS)
    return any(attr.type in kinds for attr in node.attribute)


def _check_signature(original: OnnxModel, quantized: OnnxModel) -> None:
    for what, before, after in (
        ("inputs", original.inputs, quantized.inputs),
        ("outputs", original.outputs, quantized.outputs),
    ):
        if before != after:
            raise CliError(
                f"the quantized model's {what} differ from the original's "
                f"({_describe(after)} instead of {_describe(before)}); nothing written"
            )


def _describe(specs) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "none"


# --------------------------------------------------------------------------- rewrite


def _rewrite_linear_classifiers(model: onnx.ModelProto) -> list[str]:
    """Replace each rewritable ``LinearClassifier`` by standard ops, in place; returns notes."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(_is_linear_classifier(node) for node in graph.node):
        return []
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    default_opset = opsets.get("", opsets.get("ai.onnx", 0))
    if 0 < default_opset < 7:
        return ["left LinearClassifier as is: the model's opset is older than 7"]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return ["left LinearClassifier as is: ONNX shape inference failed on this model"]
    infos = {
        info.name: info
        for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    }
    used = {name for node in graph.node for name in node.input}
    used.update(output.name for output in graph.output)
    taken = {name for node in graph.node for name in (*node.input, *node.output, node.name)}
    taken.update(init.name for init in graph.initializer)
    taken.update(item.name for item in graph.input)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    notes: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if not _is_linear_classifier(node):
            nodes.append(node)
            continue
        label = node.name or "LinearClassifier"
        where = "LinearClassifier" if label == "LinearClassifier" else f"LinearClassifier '{label}'"
        features = _float_features(infos.get(node.input[0]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        labels = list(attrs.get("classlabels_ints", [])) or [
            s.decode() for s in attrs.get("classlabels_strings", [])
        ]
        classes = len(labels)
        coefficients = np.asarray(attrs.get("coefficients", []), dtype=np.float32)
        intercepts = np.asarray(attrs.get("intercepts", np.zeros(classes)), dtype=np.float32)
        post = attrs.get("post_transform", b"NONE").decode()
        why_not = None
        if features is None:
            why_not = "its input is not a float [N, F] tensor of known width"
        elif classes < 2 or coefficients.size != classes * features or intercepts.size != classes:
            why_not = "its weights are not one row per class"
        elif post not in _POST_TRANSFORMS:
            why_not = f"post_transform {post} has no standard-op equivalent here"
        if why_not is not None:
            notes.append(f"left {where} as is: {why_not}")
            nodes.append(node)
            continue
        assert features is not None

        label_out = node.output[0] if node.output and node.output[0] in used else ""
        scores_out = node.output[1] if len(node.output) > 1 and node.output[1] in used else ""
        base = fresh(f"{label}_as_matmul")
        weights, bias = fresh(f"{base}_weights"), fresh(f"{base}_bias")
        product, raw = fresh(f"{base}_product"), fresh(f"{base}_scores")
        matrix = np.ascontiguousarray(coefficients.reshape(classes, features).T)
        graph.initializer.append(numpy_helper.from_array(matrix, weights))
        graph.initializer.append(numpy_helper.from_array(intercepts, bias))
        op = _POST_TRANSFORMS[post]
        if op is None and scores_out:
            raw = scores_out
        nodes.append(helper.make_node("MatMul", [node.input[0], weights], [product],
                                      name=fresh(f"{base}_MatMul")))
        nodes.append(helper.make_node("Add", [product, bias], [raw], name=fresh(f"{base}_Add")))
        if op is not None and scores_out:
            attrs_op = {"axis": 1} if op == "Softmax" else {}
            nodes.append(helper.make_node(op, [raw], [scores_out], name=fresh(f"{base}_{op}"),
                                          **attrs_op))
        if label_out:
            index, table = fresh(f"{base}_argmax"), fresh(f"{base}_labels")
            values = np.array(labels, dtype=np.int64 if isinstance(labels[0], int) else object)
            graph.initializer.append(numpy_helper.from_array(values, table))
            nodes.append(helper.make_node("ArgMax", [raw], [index], axis=1, keepdims=0,
                                          name=fresh(f"{base}_ArgMax")))
            nodes.append(helper.make_node("Gather", [table, index], [label_out], axis=0,
                                          name=fresh(f"{base}_Gather")))
        finish = f" + {op}" if op is not None and scores_out else ""
        notes.append(
            f"rewrote {where} (ai.onnx.ml, {features}×{classes} weights) as "
            f"MatMul + Add{finish} so that ONNX Runtime can quantize its weights"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return notes


def _merge_opset_imports(model: onnx.ModelProto) -> list[str]:
    """One opset entry per domain, and one for the default domain, as the quantizer requires.

    skl2onnx can list the default domain twice, and a graph made only of ``ai.onnx.ml``
    operators may not list it at all; ONNX Runtime's quantizer refuses both.
    """
    from onnx import helper

    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    notes = []
    if len(versions) != len(model.opset_import):
        notes.append("merged duplicate opset entries (one per domain, as the quantizer needs)")
    if "" not in versions:
        versions[""] = _DEFAULT_OPSET
        notes.append(f"added an opset entry for the default domain (version {_DEFAULT_OPSET})")
    del model.opset_import[:]
    for domain in sorted(versions):
        model.opset_import.append(helper.make_opsetid(domain, versions[domain]))
    return notes


def _is_linear_classifier(node: onnx.NodeProto) -> bool:
    return node.op_type == "LinearClassifier" and node.domain == _ML_DOMAIN


def _float_features(info: onnx.ValueInfoProto | None) -> int | None:
    """F when ``info`` is a float tensor ``[N, F]`` with F known, else None."""
    from onnx import TensorProto

    if info is None or not info.type.HasField("tensor_type"):
        return None
    tensor = info.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or not tensor.HasField("shape"):
        return None
    dims = tensor.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value") or dims[1].dim_value <= 0:
        return None
    return int(dims[1].dim_value)


def _check_rewrite(original: OnnxModel, prepared: onnx.ModelProto, rows: _Rows, src: Path) -> None:
    """The rewritten graph must give the original's outputs before it is quantized."""
    try:
        rewritten = OnnxModel.from_bytes(prepared.SerializeToString(), name=f"{src.stem}-rewritten")
    except EdgecloudError as exc:
        raise CliError(
            f"rewriting {src} for quantization gave a model that does not load ({exc.message})"
        ) from None
    X = rows.X[:EVAL_CHUNK]
    before, after = _run_rows(original, X), _run_rows(rewritten, X)
    for key, value in before.items():
        got = after.get(key)
        if value.dtype.kind == "f":
            same = got is not None and got.shape == value.shape and np.allclose(
                got, value, rtol=0.0, atol=_REWRITE_ATOL
            )
        else:
            same = got is not None and np.array_equal(got, value)
        if not same:
            raise CliError(
                f"rewriting the LinearClassifier of {src} as MatMul changed output '{key}'; "
                "this model cannot be quantized here"
            )


# --------------------------------------------------------------------------- plumbing


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


# --------------------------------------------------------------------------- command


def render_report(report: QuantizeReport) -> Table:
    """The report as a rich table: original, quantized and the change, one figure per row."""
    from rich.table import Table

    per_channel = ", per-channel" if report.per_channel else ""
    table = Table(
        title=f"{report.source.name} -> {report.output.name} ({report.method} int8{per_channel})",
        caption=(
            f"compared on {report.eval_rows} rows ({report.eval_data}); latency: median of "
            f"{report.repeats} calls per model, alternating, 1 thread, after {WARMUP} warmup "
            f"calls; weights stored as integers: {report.quantized_tensors} "
            f"{'tensor' if report.quantized_tensors == 1 else 'tensors'}, "
            f"{report.quantized_values} values"
        ),
    )
    table.add_column("figure", justify="left")
    for column in ("original", "quantized", "change"):
        table.add_column(column, justify="right")
    o, q = report.original, report.quantized
    table.add_row("size (bytes)", str(o.size_bytes), str(q.size_bytes),
                  f"×{q.size_bytes / o.size_bytes:.2f}")
    for rows, before in o.latency_us.items():
        after = q.latency_us[rows]
        what = "1 row" if rows == 1 else f"{rows} rows"
        table.add_row(f"latency, {what} (median µs)", f"{before:.1f}", f"{after:.1f}",
                      f"×{after / before:.2f}")
    if o.accuracy is not None and q.accuracy is not None:
        table.add_row("accuracy", f"{o.accuracy:.2%}", f"{q.accuracy:.2%}",
                      f"{100 * (q.accuracy - o.accuracy):+.2f} pts")
    if report.agreement is not None:
        table.add_row("top-1 agreement with original", "", f"{report.agreement:.2%}", "")
    if report.max_abs_diff is not None:
        table.add_row("max |difference| of float outputs", "", f"{report.max_abs_diff:.3g}", "")
    return table


def _cmd_quantize(args: argparse.Namespace) -> int:
    import onnxruntime
    from rich.console import Console

    method = args.method or ("static" if args.calibration is not None else "dynamic")
    # ONNX Runtime's own warnings (unused initializers in the calibration graph) are noise
    # here; this process only runs this command.
    onnxruntime.set_default_logger_severity(3)
    report = quantize_model(
        args.model, args.out, calibration=args.calibration, method=method,
        per_channel=args.per_channel, evaluation=args.evaluation,
    )
    console = Console()
    console.print(render_report(report))
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {report.output}", highlight=False)
    return 0


def register(models_subparsers) -> None:
    """Add ``quantize`` to the subparsers of the ``models`` command group."""
    parser = models_subparsers.add_parser(
        "quantize",
        help="make an int8 variant of an ONNX model and compare it with the original",
        description="Quantize an ONNX model to int8 with ONNX Runtime, check that it loads "
        "with the same signature, write it atomically and print size, latency, agreement and "
        "accuracy beside the original.",
    )
    parser.add_argument("model", type=Path, metavar="FILE", help="the ONNX model to quantize")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="where to write the quantized model")
    parser.add_argument("--calibration", type=Path, default=None, metavar="DATA.npz",
                        help="rows to calibrate on (X; optional labels y); also the rows "
                        "measured on unless --eval is given")
    parser.add_argument("--eval", dest="evaluation", type=Path, default=None,
                        metavar="DATA.npz",
                        help="rows to compare the models on (X; optional labels y for "
                        "accuracy); default: the calibration rows, else 256 random rows")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="static: int8 weights and activations, calibrated (the default "
                        "with --calibration); dynamic: int8 weights, activations quantized at "
                        "run time (the default without)")
    parser.add_argument("--per-channel", action="store_true",
                        help="one scale per output channel of each weight")
    parser.set_defaults(handler=_cmd_quantize)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgecloud models quantize ...`` on its own (``python -m edgecloud.quantize``)."""
    from edgecloud.cli import run

    parser = argparse.ArgumentParser(prog="edgecloud")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = sub.add_parser("models", help="work with model files")
    register(models.add_subparsers(dest="models_command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
