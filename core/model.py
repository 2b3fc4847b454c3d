"""The ONNX Runtime model wrapper shared by the agent and the gateway.

:class:`OnnxModel` holds one ONNX Runtime ``InferenceSession`` and the model's
v2 signature (:class:`~core.tensors.TensorSpec` per input and output). It
validates inputs against that signature before running, so a bad tensor is an
:class:`~core.errors.InvalidInput` that names the input, and a failure inside
ONNX Runtime is a :class:`~core.errors.ModelFailure` whose details go to the
log only.

Signature rules
    Symbolic or unknown dimensions become -1. An input that ONNX Runtime reports
    with no dimensions at all is a scalar or has an unknown rank (ONNX Runtime
    does not tell them apart), so its rank is not checked here. Outputs of a type
    v2 cannot carry (a sequence or map, as some converters emit next to the
    tensors) are left out of :attr:`OnnxModel.outputs` and never fetched (they
    are listed in :attr:`OnnxModel.skipped_outputs`); an input of such a type
    makes the model unloadable.

ZipMap outputs
    scikit-learn models exported with skl2onnx's defaults end in a ``ZipMap``
    node that turns the ``[N, classes]`` probability tensor into a sequence of
    ``{class: probability}`` maps, which v2 cannot carry. At load such an
    output becomes that probability tensor again, under the same name (the
    ZipMap node is replaced by an Identity in the loaded copy; the file is not
    touched), so a default export serves its class probabilities like an export
    with ``zipmap`` off. Columns are in the order of the model's class labels.

String tensors
    ONNX Runtime's Python API takes and returns ``str`` for ``tensor(string)``.
    BYTES inputs (object arrays of ``bytes`` or ``str``) are therefore decoded
    as UTF-8 on the way in, and string outputs are encoded back to ``bytes``, so
    callers always see BYTES as object arrays of ``bytes``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from edgecloud.core.errors import InvalidInput, ModelFailure
from edgecloud.core.tensors import V2_TO_NUMPY, TensorSpec, v2_datatype

log = structlog.get_logger(__name__)

# ONNX Runtime's type strings for the tensors v2 can carry.
ORT_TO_V2: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Short, caller-safe reasons for ONNX Runtime's load errors (by class name).
_LOAD_REASONS: Mapping[str, str] = {
    "InvalidProtobuf": "it is not an ONNX model",
    "InvalidGraph": "its graph is invalid",
    "NoSuchFile": "the file does not exist",
    "NotImplemented": "it uses an operator or type this runtime does not support",
    "InvalidArgument": "ONNX Runtime rejected it as invalid",
}
_DEFAULT_LOAD_REASON = "ONNX Runtime could not load it"


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """Rows in the first dimension of the first input.

    Raises :class:`~core.errors.InvalidInput` when there are no inputs or the
    first one is a scalar.
    """
    for name, array in inputs.items():
        if np.ndim(array) == 0:
            raise InvalidInput(f"input '{name}' is a scalar and has no batch dimension")
        return int(np.shape(array)[0])
    raise InvalidInput("there are no inputs to take a batch size from")


def rows_per_run(model: OnnxModel, wanted: int | None, default: int, what: str) -> int:
    """Rows to give ``model`` per run: its fixed batch size if it has one, else ``wanted``.

    ``wanted`` is a chunk size asked for by hand (None: ``default``); one that
    differs from a fixed batch size raises :class:`~core.errors.InvalidInput`
    naming ``what`` (the model, as the user called it) and both sizes.
    """
    fixed = model.fixed_batch_size
    if fixed is None:
        return wanted or default
    if wanted is not None and wanted != fixed:
        raise InvalidInput(f"{what} takes exactly {_rows(fixed)} per run (its input "
                           f"{model.inputs[0].name!r} has a fixed batch dimension); "
                           f"a chunk of {wanted} rows cannot be used with it")
    return fixed


class OnnxModel:
    """One loaded ONNX model (an ONNX Runtime InferenceSession) with its v2 signature.

    Build it with :meth:`load` or :meth:`from_bytes`. ``run`` may be called from
    several threads at once (ONNX Runtime sessions are thread-safe and release
    the GIL while computing).

    Attributes:
        name: the model's name as clients address it.
        version: the model version as clients address it.
        path: the file it was loaded from, or None when loaded from bytes.
        inputs: the model's inputs, in session order.
        outputs: the model's tensor outputs, in session order.
    """

    platform: str = "onnxruntime_onnx"
    """The v2 ``platform`` reported in model metadata."""

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        name: str,
        version: str = "1",
        path: Path | None = None,
    ) -> None:
        """Wrap an open session; prefer :meth:`load` or :meth:`from_bytes`."""
        self.name = name
        self.version = version
        self.path = path
        self._session = session
        self.inputs: tuple[TensorSpec, ...] = tuple(
            _input_spec(self._describe(), arg) for arg in session.get_inputs()
        )
        outputs = []
        skipped = []
        for arg in session.get_outputs():
            if arg.type in ORT_TO_V2:
                outputs.append(TensorSpec(arg.name, ORT_TO_V2[arg.type], _dims(arg.shape)))
            else:
                skipped.append((arg.name, arg.type))
                log.warning(
                    "model_output_skipped",
                    model=name,
                    version=version,
                    output=arg.name,
                    type=arg.type,
                )
        if not outputs:
            raise InvalidInput(f"{self._describe()} has no tensor outputs that v2 can carry")
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.skipped_outputs: tuple[tuple[str, str], ...] = tuple(skipped)
        """Outputs left out because v2 cannot carry them: (name, ONNX Runtime type)."""
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        """The execution providers the session runs on, in ONNX Runtime's order of
        preference (the first one that has a kernel runs each node)."""
        log.info("model_providers", model=name, version=version,
                 execution_provider=self.providers[0], providers=list(self.providers))
        self._output_list = [spec.name for spec in self.outputs]
        self._numeric_outputs = all(spec.datatype != "BYTES" for spec in self.outputs)
        # On CPU alone the session wrapper's run only re-checks input names (done by
        # validate_inputs) and offers a provider fallback there is no use for: call the
        # runtime's own run directly. Any other provider keeps the wrapper.
        inner = getattr(session, "_sess", None)
        if inner is not None and session.get_providers() == ["CPUExecutionProvider"]:
            inner_run = inner.run
            self._run = lambda names, feed: inner_run(names, feed, None)
        else:
            self._run = session.run
        self._input_names = frozenset(spec.name for spec in self.inputs)
        # Per input: the one form that needs no conversion (native dtype, rank, fixed
        # dimensions), so a well-formed request is checked in a few comparisons.
        self._accepts = tuple(
            (spec.name, V2_TO_NUMPY[spec.datatype].newbyteorder("="), len(spec.shape),
             tuple((axis, dim) for axis, dim in enumerate(spec.shape) if dim >= 0))
            for spec in self.inputs
            if spec.datatype != "BYTES" and spec.shape
        ) if all(spec.datatype != "BYTES" and spec.shape for spec in self.inputs) else None

    @property
    def intra_op_threads(self) -> int:
        """ONNX Runtime intra-op threads the session was opened with (0: ONNX Runtime's choice)."""
        return self._session.get_session_options().intra_op_num_threads

    @property
    def spinning(self) -> bool:
        """Whether the session's idle intra-op threads spin waiting for work (ONNX Runtime's
        default) rather than sleep."""
        options = self._session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # never set: ONNX Runtime's default
            return True

    @property
    def fixed_batch_size(self) -> int | None:
        """Rows per run when the inputs fix the batch dimension (an export with batch 1), else None.

        The first dimension of the first input decides; None when it is free
        (-1) or the input has no dimensions.
        """
        if not self.inputs or not self.inputs[0].shape or self.inputs[0].shape[0] < 0:
            return None
        return self.inputs[0].shape[0]

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        name: str,
        version: str = "1",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        spinning: bool = True,
    ) -> OnnxModel:
        """Open the ONNX file at ``path``.

        Thread counts of 0 let ONNX Runtime choose. ``spinning=False`` makes the
        intra-op threads sleep as soon as a run leaves them without work instead of
        spinning for more (ONNX Runtime's ``session.intra_op.allow_spinning``): the
        choice where runs share their cores with other work, such as a server's
        event loop or other runs. ``providers`` is an ordered
        preference (default: ``["CPUExecutionProvider"]``); those this build or
        machine lacks are skipped with a warning, CPU is the fallback, and
        :attr:`providers` says what the session got (see :func:`usable_providers`).
        An unknown provider name raises ``ValueError``. A missing file, a file that
        is not an ONNX model or an invalid graph raises
        :class:`~core.errors.InvalidInput` naming the file.
        """
        path = Path(path)
        if not path.exists():
            raise InvalidInput(f"cannot load model '{name}' from {path}: the file does not exist")
        if not path.is_file():
            raise InvalidInput(f"cannot load model '{name}' from {path}: it is not a file")
        session = _open_session(
            str(path),
            where=f"from {path}",
            name=name,
            version=version,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            providers=providers,
            spinning=spinning,
        )
        return cls(session, name=name, version=version, path=path)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        name: str,
        version: str = "1",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        spinning: bool = True,
    ) -> OnnxModel:
        """Open a serialized ONNX model held in memory; arguments and errors as for
        :meth:`load`."""
        session = _open_session(
            bytes(data),
            where=f"from {len(data)} bytes",
            name=name,
            version=version,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            providers=providers,
            spinning=spinning,
        )
        return cls(session, name=name, version=version, path=None)

    # -------------------------------------------------------------- validation

    def validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the signature and return them in signature order.

        Checks the names (none missing, none unknown), each array's datatype, its
        rank and every fixed dimension; a mismatch raises
        :class:`~core.errors.InvalidInput` naming the input, what was expected and
        what was given. Numeric arrays come back in native byte order (unchanged
        when they already are); BYTES arrays come back as object arrays of
        ``str``, the form ONNX Runtime takes, and an element that is not UTF-8
        raises :class:`~core.errors.InvalidInput`.
        """
        accepts = self._accepts
        if accepts is not None and len(inputs) == len(accepts):
            feed = {}
            for name, native, rank, fixed in accepts:
                array = inputs.get(name)
                if type(array) is not np.ndarray or array.dtype != native or array.ndim != rank:
                    break
                shape = array.shape
                for axis, dim in fixed:
                    if shape[axis] != dim:
                        break
                else:
                    feed[name] = array
                    continue
                break
            else:
                return feed
        expected = [spec.name for spec in self.inputs]
        unknown = [name for name in inputs if name not in expected]
        if unknown:
            raise InvalidInput(
                f"{self._describe()} has no input '{unknown[0]}'; its inputs are {_names(expected)}"
            )
        missing = [name for name in expected if name not in inputs]
        if missing:
            raise InvalidInput(
                f"input '{missing[0]}' is missing: {self._describe()} takes {len(expected)} "
                f"inputs ({_names(expected)}), got {len(inputs)}"
            )
        return {spec.name: _checked_input(spec, inputs[spec.name]) for spec in self.inputs}

    # ----------------------------------------------------------------- running

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        *,
        validated: bool = False,
    ) -> dict[str, np.ndarray]:
        """Validate ``inputs`` and run the model; returns the outputs by name.

        ``output_names`` picks outputs (default: all of :attr:`outputs`); an
        unknown name raises :class:`~core.errors.InvalidInput`. A failure inside
        ONNX Runtime is logged as ``model_run_failed`` and raised as
        :class:`~core.errors.ModelFailure` with a generic message.
        ``validated=True`` skips the checks for inputs that already came out
        of :meth:`validate_inputs`.
        """
        feed = inputs if validated else self.validate_inputs(inputs)
        names = self._output_list if output_names is None else self._output_names(output_names)
        try:
            results = self._run(names, feed)
        except Exception as exc:
            log.error(
                "model_run_failed",
                model=self.name,
                version=self.version,
                error_type=type(exc).__name__,
                error=str(exc),
                input_shapes={name: list(array.shape) for name, array in feed.items()},
            )
            raise ModelFailure(f"{self._describe()} failed to run") from exc
        if self._numeric_outputs:  # ONNX Runtime returns numeric tensors as numpy arrays
            return dict(zip(names, results, strict=True))
        return {name: _from_ort(value) for name, value in zip(names, results, strict=True)}

    async def run_async(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        *,
        executor: concurrent.futures.Executor | None = None,
        validated: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run :meth:`run` in ``executor`` (the loop's default when None)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.run, inputs, output_names, validated=validated)
        return await loop.run_in_executor(executor, call)

    # ----------------------------------------------------------------- helpers

    def _output_names(self, output_names: Sequence[str] | None) -> list[str]:
        known = [spec.name for spec in self.outputs]
        if output_names is None:
            return known
        names = list(output_names)
        for name in names:
            if name not in known:
                raise InvalidInput(
                    f"{self._describe()} has no output '{name}'; its outputs are {_names(known)}"
                )
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidInput(f"output '{name}' is requested more than once")
        return names

    def _describe(self) -> str:
        return f"model '{self.name}' version {self.version}"

    def __repr__(self) -> str:
        return (
            f"OnnxModel(name={self.name!r}, version={self.version!r}, "
            f"inputs={list(self.inputs)!r}, outputs={list(self.outputs)!r})"
        )


class RunTimer:
    """One model's recent run time per row (moving average), measured around the model
    run alone (never a thread hand-off or a wait for a worker, so a busy server does not
    mistake its own queueing for a slow model), to decide which runs are cheap enough to
    make on the event loop."""

    def __init__(self, model: OnnxModel, *, validated: bool = False) -> None:
        """``validated``: the inputs given to :meth:`run` are already checked."""
        self.model = model
        self._validated = validated
        self.per_row_s: float | None = None

    def expects_below(self, rows: int, below_s: float) -> bool:
        """Whether ``rows`` rows are expected to take less than ``below_s`` (False before
        the first run: nothing is known yet)."""
        per_row = self.per_row_s
        return per_row is not None and per_row * max(rows, 1) < below_s

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model (on any thread) and fold its time into the average."""
        start = time.perf_counter()
        outputs = self.model.run(inputs, validated=self._validated)
        rows = max(next(iter(inputs.values())).shape[0] if inputs else 1, 1)
        took = (time.perf_counter() - start) / rows
        previous = self.per_row_s
        self.per_row_s = took if previous is None else 0.9 * previous + 0.1 * took
        return outputs

    def run_if_below(self, inputs: Mapping[str, np.ndarray], rows: int,
                     below_s: float) -> dict[str, np.ndarray] | None:
        """Run now when ``rows`` rows are expected to take less than ``below_s``; None
        (nothing run) otherwise."""
        return self.run(inputs) if self.expects_below(rows, below_s) else None


CPU_PROVIDER = "CPUExecutionProvider"
"""ONNX Runtime's CPU execution provider, in every build: the fallback of every model."""


def usable_providers(wanted: Sequence[str] | None, *, model: str = "",
                     version: str = "") -> list[str]:
    """The execution providers of ``wanted`` (in its order) that this ONNX Runtime has.

    ``wanted`` defaults to CPU alone. Providers this build or machine lacks (CUDA
    on a CPU-only machine) are skipped with one ``execution_providers_unavailable``
    warning; when none is left, CPU is the fallback. A name ONNX Runtime does not
    know at all (a typo) raises ``ValueError``.
    """
    wanted = list(wanted) if wanted else [CPU_PROVIDER]
    unknown = [p for p in wanted if p not in ort.get_all_providers()]
    if unknown:
        raise ValueError(f"unknown execution providers {unknown}; "
                         f"ONNX Runtime knows {ort.get_all_providers()}")
    available = ort.get_available_providers()
    usable = [p for p in dict.fromkeys(wanted) if p in available]
    if len(usable) < len(dict.fromkeys(wanted)):
        log.warning("execution_providers_unavailable", model=model, version=version,
                    wanted=wanted, skipped=[p for p in wanted if p not in available],
                    available=available, using=usable or [CPU_PROVIDER])
    return usable or [CPU_PROVIDER]


def _open_session(
    source: str | bytes,
    *,
    where: str,
    name: str,
    version: str,
    intra_op_threads: int,
    inter_op_threads: int,
    providers: Sequence[str] | None,
    spinning: bool = True,
) -> ort.InferenceSession:
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise ValueError("thread counts must be 0 (ONNX Runtime's choice) or more")
    chosen = usable_providers(providers, model=name, version=version)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3  # errors only; our own log says what happened
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=chosen)
    except Exception as exc:
        reason = _LOAD_REASONS.get(type(exc).__name__, _DEFAULT_LOAD_REASON)
        log.warning(
            "model_load_failed",
            model=name,
            version=version,
            source=where,
            error_type=type(exc).__name__,
            error=str(exc),
        )
        raise InvalidInput(f"cannot load model '{name}' {where}: {reason}") from exc
    if not any(arg.type.startswith("seq(map(") for arg in session.get_outputs()):
        return session
    try:
        unzipped = _without_zipmap(source)
        if unzipped is None:
            return session
        data, names = unzipped
        unwrapped = ort.InferenceSession(data, sess_options=options, providers=chosen)
    except Exception as exc:  # the model as it is still loads; its map outputs stay skipped
        log.warning("model_zipmap_kept", model=name, version=version,
                    error_type=type(exc).__name__, error=str(exc))
        return session
    log.info("model_zipmap_unwrapped", model=name, version=version, outputs=names,
             detail="the ZipMap outputs serve as [N, classes] probability tensors")
    return unwrapped


def _without_zipmap(source: str | bytes) -> tuple[bytes, list[str]] | None:
    """The model with each ZipMap graph output turned back into its probability tensor.

    Returns the new serialized model and the outputs changed, or None when no
    graph output comes straight from a ZipMap node. The output keeps its name
    and becomes ``float [N, classes]`` (classes: the ZipMap's label count).
    """
    import onnx  # only models with map outputs pay for parsing the graph
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(
        source)
    graph = model.graph
    outputs = {value.name: value for value in graph.output}
    changed = []
    for index, node in enumerate(graph.node):
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml":
            continue
        if len(node.output) != 1 or node.output[0] not in outputs:
            continue
        labels = next((len(a.ints) or len(a.strings) for a in node.attribute
                       if a.name in ("classlabels_int64s", "classlabels_strings")), 0)
        name = node.output[0]
        graph.node[index].CopyFrom(helper.make_node("Identity", [node.input[0]], [name],
                                                    name=node.name or f"unzip_{name}"))
        outputs[name].CopyFrom(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, ["N", labels if labels else None]))
        changed.append(name)
    if not changed:
        return None
    if not any(op.domain in ("", "ai.onnx") for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", 1))
    return model.SerializeToString(), changed


def _dims(shape: Sequence[int | str | None] | None) -> tuple[int, ...]:
    if not shape:
        return ()
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)


def _input_spec(model: str, arg: ort.NodeArg) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise InvalidInput(f"{model} input '{arg.name}' has type {arg.type}, which v2 cannot carry")
    return TensorSpec(arg.name, datatype, _dims(arg.shape))


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _checked_input(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    label = f"input '{spec.name}'"
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{label} must be a numpy array, got {type(array).__name__}")
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError:
        datatype = str(array.dtype)
    if datatype != spec.datatype:
        raise InvalidInput(f"{label} expects datatype {spec.datatype}, got {datatype}")
    # () is a scalar or an unknown rank; ONNX Runtime checks those itself.
    if spec.shape:
        if array.ndim != len(spec.shape):
            raise InvalidInput(
                f"{label} expects {len(spec.shape)} dimensions {_shape(spec.shape)}, "
                f"got {array.ndim} {_shape(array.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if want >= 0 and want != got:
                raise InvalidInput(
                    f"{label} dimension {axis} must be {want}, got {got} "
                    f"(expected shape {_shape(spec.shape)}, got {_shape(array.shape)})"
                )
    if datatype == "BYTES":
        return _to_ort_strings(label, array)
    native = V2_TO_NUMPY[datatype].newbyteorder("=")
    return array if array.dtype == native else array.astype(native)


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def _to_ort_strings(label: str, array: np.ndarray) -> np.ndarray:
    """Object array of ``str``: ONNX Runtime's form for ``tensor(string)``."""
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        if isinstance(item, str):
            out[index] = item
        elif isinstance(item, bytes | bytearray | memoryview):
            try:
                out[index] = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"{label} element {index} is not UTF-8 text, which string inputs require"
                ) from None
        else:
            raise InvalidInput(
                f"{label} element {index} is a {type(item).__name__}; BYTES elements must be "
                f"bytes or str"
            )
    return out.reshape(array.shape)


def _from_ort(value: object) -> np.ndarray:
    """An ONNX Runtime result as numpy; string tensors become object arrays of bytes."""
    array = np.asarray(value)
    if array.dtype.kind not in ("O", "U", "S"):
        return array
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        out[index] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out.reshape(array.shape)
