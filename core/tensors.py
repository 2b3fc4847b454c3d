"""Transport-neutral tensor types: v2 datatypes, tensor specs, requests.

The v2 codec (``core.codec``) converts between these and protobuf; the domain
code of agent and gateway only ever sees these frozen dataclasses and numpy
arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
) -> str | None:
    """Why two models cannot serve one task, or None when they agree.

    They agree when inputs and outputs match by position in count, datatype
    and shape (the batch dimension aside); names may differ.
    """
    for side, a_specs, b_specs in (("inputs", inputs_a, inputs_b),
                                   ("outputs", outputs_a, outputs_b)):
        if len(a_specs) != len(b_specs):
            return f"{side}: {len(a_specs)} against {len(b_specs)}"
        for i, (a, b) in enumerate(zip(a_specs, b_specs, strict=True)):
            if not a.compatible_with(b):
                return (
                    f"{side}[{i}]: {a.name} {a.datatype}{list(a.shape)} against "
                    f"{b.name} {b.datatype}{list(b.shape)}"
                )
    return None
