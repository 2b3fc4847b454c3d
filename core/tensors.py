"""Transport-neutral tensor types: v2 datatypes, tensor specs, requests.

The v2 codec (``core.codec``) converts between these and protobuf; the domain
code of agent and gateway only ever sees these frozen dataclasses and numpy
arrays.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from edgecloud.core.errors import InvalidInput

ParamValue = bool | int | float | str

# v2 datatype name -> numpy dtype (little-endian on the wire).
V2_TO_NUMPY: Mapping[str, np.dtype] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        "BYTES": np.dtype(object),
    }
)


_NUMERIC_BY_DTYPE: dict[np.dtype, str] = {}
for _name, _dtype in V2_TO_NUMPY.items():
    if _name != "BYTES":
        _NUMERIC_BY_DTYPE[_dtype] = _name
        _NUMERIC_BY_DTYPE[_dtype.newbyteorder(">")] = _name


def v2_datatype(dtype: np.dtype) -> str:
    """Return the v2 datatype name for a numpy dtype, or raise ``ValueError``."""
    dtype = np.dtype(dtype)
    name = _NUMERIC_BY_DTYPE.get(dtype)
    if name is not None:
        return name
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    raise ValueError(f"no v2 datatype for numpy dtype {dtype}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, v2 datatype and shape of a model input or output.

    ``shape`` uses -1 for a dimension of any size (usually the batch).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def compatible_with(self, other: TensorSpec) -> bool:
        """True when both have the datatype and shape (batch dimension aside)."""
        if self.datatype != other.datatype or len(self.shape) != len(other.shape):
            return False
        return all(
            a == b or a < 0 or b < 0 for a, b in zip(self.shape[1:], other.shape[1:], strict=True)
        )


NO_PARAMETERS: Mapping[str, ParamValue] = MappingProxyType({})
"""The empty parameter map shared by requests and answers that carry none."""


class InferRequest(NamedTuple):
    """A decoded v2 inference request: an immutable value.

    A named tuple rather than a frozen dataclass: one is made per request on
    the hot path, and a tuple is several times cheaper to build.
    """

    model_name: str
    inputs: Mapping[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: Mapping[str, ParamValue] = NO_PARAMETERS
    requested_outputs: tuple[str, ...] = ()


class InferResponse(NamedTuple):
    """A v2 inference answer before encoding: an immutable value (see :class:`InferRequest`)."""

    model_name: str
    outputs: Mapping[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: Mapping[str, ParamValue] = NO_PARAMETERS
    update: Awaitable[InferResponse] | None = None
    """A later, better answer to the same request, when one may come (a request that
    asked for a fast answer then a better one): a stream sends it as a further message
    with the same ``id``; a unary call leaves it (the answer is kept by id)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ModelMetadata reports for one model."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    """Most rows the server batches into one run (ModelConfig); 0 when it does not batch."""
    execution_provider: str = ""
    """The ONNX Runtime execution provider the model runs on (ModelConfig's
    ``execution_provider`` parameter); empty when not known."""


def requested_outputs(requested: Sequence[str], available: Sequence[str],
                      owner: str) -> tuple[str, ...]:
    """The outputs a request asks for, in its order and without repeats; all when none.

    Raises :class:`~core.errors.InvalidInput` naming the first unknown output
    and what ``owner`` (for example ``"model 'digits'"``) has instead.
    """
    if not requested:
        return tuple(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidInput(
            f"requested output {unknown[0]!r} does not exist; {owner} has "
            f"{', '.join(available)}"
        )
    return tuple(dict.fromkeys(requested))


def signature_mismatch(
    inputs_a: tuple[TensorSpec, ...],
    outputs_a: tuple[TensorSpec, ...],
    inputs_b: tuple[TensorSpec, ...],
    outputs_b: tuple[TensorSpec, ...],
    *,
    a: str = "the task",
    b: str = "this model",
) -> str | None:
    """Why two models cannot serve one task, or None when they agree.

    They agree when inputs and outputs match by position in count, datatype
    and shape (the batch dimension aside), and the inputs have the same
    names: requests reach either model under the input names apps use, while
    outputs are mapped by position, so output names may differ. ``a`` and
    ``b`` name the two sides in the message (the reference first).
    """
    for i, (x, y) in enumerate(zip(inputs_a, inputs_b, strict=False)):
        if x.name != y.name:
            return (
                f"input {i} is named {y.name!r} in {b} but {x.name!r} in {a}; inputs are "
                f"sent by name, so export {b} with the input name {x.name!r}"
            )
    for side, a_specs, b_specs in (("inputs", inputs_a, inputs_b),
                                   ("outputs", outputs_a, outputs_b)):
        if len(a_specs) != len(b_specs):
            return f"{b} has {len(b_specs)} {side}, {a} {len(a_specs)}"
        for i, (x, y) in enumerate(zip(a_specs, b_specs, strict=True)):
            if not x.compatible_with(y):
                if (side == "outputs" and len(x.shape) == len(y.shape) == 2
                        and x.datatype == y.datatype and x.datatype in SCORE_DATATYPES):
                    return (
                        f"output {i} of {b} ({y.name!r}) has {y.shape[1]} classes, "
                        f"{a} ({x.name!r}) {x.shape[1]}; both must score the same classes"
                    )
                return (
                    f"{side}[{i}]: {x.name} {x.datatype}{list(x.shape)} in {a} against "
                    f"{y.name} {y.datatype}{list(y.shape)} in {b}"
                )
    return None


SCORE_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
"""Datatypes an output holding class scores may have."""

ZIPMAP_OFF = "options={id(model): {'zipmap': False}}"
"""How to ask skl2onnx for probabilities as a tensor instead of a sequence of maps."""


def holds_class_scores(spec: TensorSpec) -> bool:
    """True for a float ``[N, classes]`` tensor, the form class scores must have."""
    return spec.datatype in SCORE_DATATYPES and len(spec.shape) == 2


def class_scores_output(outputs: Sequence[TensorSpec], wanted: str | None = None, *,
                        owner: str, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The output that holds class scores: ``wanted``, or else the one float ``[N, C]`` output.

    ``owner`` names the model in messages (``"model 'digits'"``); ``skipped``
    are the outputs v2 cannot carry, as (name, type) pairs, listed among the
    outputs found. Raises :class:`~core.errors.FailedPrecondition` when
    ``wanted`` is not a float ``[N, C]`` output of the model, or, without
    ``wanted``, when no output or several outputs have that form; the message
    names the outputs found and, for a sequence of maps (a scikit-learn
    ZipMap), says to export with zipmap off.
    """
    from edgecloud.core.errors import FailedPrecondition

    found = ", ".join([f"{s.name!r} {s.datatype}{list(s.shape)}" for s in outputs]
                      + [f"{n!r} {kind}" for n, kind in skipped])
    if wanted is not None:
        spec = next((s for s in outputs if s.name == wanted), None)
        if spec is None:
            raise FailedPrecondition(f"{owner} has no output {wanted!r} to take class scores "
                                     f"from; its outputs are {found}")
        if not holds_class_scores(spec):
            raise FailedPrecondition(
                f"output {wanted!r} of {owner} is {spec.datatype}{list(spec.shape)}; class "
                "scores must be a float [N, classes] tensor"
            )
        return wanted
    candidates = [s.name for s in outputs if holds_class_scores(s)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise FailedPrecondition(
            f"{owner} has several outputs that could hold class scores "
            f"({', '.join(map(repr, candidates))}); name one with --scores-output or the "
            "policy's scores_output"
        )
    message = (f"{owner} has no output that holds class scores (a float [N, classes] "
               f"tensor); its outputs are {found}")
    maps = [n for n, kind in skipped if "map(" in kind]
    if maps:
        message += (f". {', '.join(map(repr, maps))} is a sequence of maps, which cannot be "
                    f"served: export the model with zipmap off (skl2onnx: {ZIPMAP_OFF})")
    raise FailedPrecondition(message)
