"""The v2 tensor codec: the one place where protobuf tensors become numpy arrays.

Converts between the Open Inference Protocol v2 messages (``ModelInferRequest``,
``ModelInferResponse``) and the transport-neutral :class:`~core.tensors.InferRequest`
and :class:`~core.tensors.InferResponse`.

Wire format
    Tensors travel either in ``raw_input_contents`` / ``raw_output_contents`` (one
    bytes entry per tensor, little-endian, row-major) or in each tensor's typed
    ``contents``; one message uses one or the other, never both. BOOL is one byte
    per element (0 or 1). A BYTES element is a 4-byte little-endian length followed
    by that many bytes. FP16 has no typed field in v2, so it travels raw only.

Decoded arrays
    Every decoded array is **read-only**: raw tensors are zero-copy views of the
    message's bytes, and typed tensors are fresh arrays frozen the same way so that
    callers see one contract. Copy an array (``arr.copy()``) before changing it.
    Each array has exactly the dtype of :data:`~core.tensors.V2_TO_NUMPY` (BYTES: an
    object array of ``bytes``) and the shape from the message. Zero-size tensors
    (a dimension of 0) are allowed.

Errors
    Anything malformed in a decoded message raises :class:`~core.errors.InvalidInput`
    with a message that names the tensor and the problem. The encoders take arrays
    produced by our own code, so an array they cannot represent is a programming
    error and raises ``ValueError`` (or ``TypeError`` for a parameter value).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import (
    NO_PARAMETERS,
    V2_TO_NUMPY,
    InferRequest,
    InferResponse,
    ParamValue,
    v2_datatype,
)
from edgecloud.protos.inference.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)

DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
"""Default limit on the decoded tensor bytes of one message."""

DEFAULT_MAX_ELEMENTS = 16 * 2**20
"""Default limit on the elements of one tensor."""

MAX_RANK = 32
"""Most dimensions a tensor may have (numpy 1.x supports no more)."""

# The typed ``contents`` field that carries each datatype; FP16 has none.
_TYPED_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The dtype each typed field is read into before the range check and the cast.
_FIELD_DTYPE: Mapping[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int64),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint64),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_LENGTH_PREFIX = struct.Struct("<I")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
_KNOWN_DATATYPES = ", ".join(V2_TO_NUMPY)


# --------------------------------------------------------------------------- parameters


def params_from_pb(params: Mapping[str, InferParameter]) -> Mapping[str, ParamValue]:
    """Convert a v2 ``parameters`` map to a dict of bool, int, float and str.

    ``uint64_param`` becomes an ``int``. A parameter with no value set raises
    :class:`~core.errors.InvalidInput`.
    """
    if not params:
        return NO_PARAMETERS
    values: dict[str, ParamValue] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidInput(f"parameter '{key}' has no value")
        values[key] = getattr(param, which)
    return values


def params_to_pb(values: Mapping[str, ParamValue], target_map: MutableMapping) -> None:
    """Write ``values`` into a v2 ``parameters`` map (``target_map``).

    ``bool`` → ``bool_param`` (checked before ``int``, whose subclass it is),
    ``int`` → ``int64_param`` (``uint64_param`` above the int64 range), ``float``
    → ``double_param``, ``str`` → ``string_param``; numpy scalars count as their
    Python kind. Any other type raises ``TypeError``; an integer beyond uint64
    raises ``ValueError``. Nothing is written when a value is refused.
    """
    for value in values.values():
        if type(value) is not str and type(value) is not float:
            break
    else:
        # The usual answer (strings and floats): written without per-value dispatch.
        for key, value in values.items():
            if type(key) is not str:
                raise TypeError(f"parameter names must be str, got {type(key).__name__}")
            if type(value) is str:
                target_map[key].string_param = value
            else:
                target_map[key].double_param = value
        return
    converted = [(key, *_param_field(key, value)) for key, value in values.items()]
    for key, field_name, value in converted:
        setattr(target_map[key], field_name, value)



def check_parameter(key: str, value: object) -> None:
    """InvalidInput unless ``value`` is a parameter v2 can carry: a bool, an integer within
    64 bits, a float or a string (what a text transport must check before decoding)."""
    try:
        _param_field(key, value)
    except (TypeError, ValueError):
        if type(value) is int:
            raise InvalidInput(f"parameter '{key}' value {value} does not fit in 64 bits") \
                from None
        raise InvalidInput(f"parameter '{key}' must be a bool, a number or a string "
                           f"(got {type(value).__name__})") from None


def _param_field(key: str, value: object) -> tuple[str, ParamValue]:
    """The ``InferParameter`` field and value for one parameter."""
    if not isinstance(key, str):
        raise TypeError(f"parameter names must be str, got {type(key).__name__}")
    kind = type(value)
    if kind is str:
        return "string_param", value  # type: ignore[return-value]
    if kind is float:
        return "double_param", value  # type: ignore[return-value]
    if isinstance(value, bool | np.bool_):
        return "bool_param", bool(value)
    if isinstance(value, int | np.integer):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            return "int64_param", number
        if 0 <= number <= _UINT64_MAX:
            return "uint64_param", number
        raise ValueError(f"parameter '{key}' value {number} does not fit in 64 bits")
    if isinstance(value, float | np.floating):
        return "double_param", float(value)
    if isinstance(value, str):
        return "string_param", str(value)
    raise TypeError(f"parameter '{key}' has unsupported type {type(value).__name__}")


# --------------------------------------------------------------------------- decoding


def decode_infer_request(
    pb: ModelInferRequest,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> InferRequest:
    """Decode and validate a v2 ``ModelInferRequest``.

    ``max_request_bytes`` bounds the tensor bytes of all inputs together (BYTES:
    the length of their data) and ``max_elements`` the elements of each input.
    Raises :class:`~core.errors.InvalidInput` naming the input and the problem.
    Per-input and per-output ``parameters`` are not interpreted.
    """
    tensors = pb.inputs
    if not tensors:
        raise InvalidInput("the request has no inputs")
    inputs = _decode_tensors(
        tensors,
        pb.raw_input_contents,
        what="input",
        raw_field="raw_input_contents",
        message="request",
        max_bytes=max_request_bytes,
        max_elements=max_elements,
    )
    return InferRequest(
        model_name=pb.model_name,
        inputs=inputs,
        model_version=pb.model_version,
        id=pb.id,
        parameters=params_from_pb(pb.parameters),
        requested_outputs=_requested_outputs(pb.outputs) if pb.outputs else (),
    )


def decode_infer_response(
    pb: ModelInferResponse,
    *,
    max_response_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> InferResponse:
    """Decode and validate a v2 ``ModelInferResponse`` (raw or typed outputs).

    Applies the same checks as :func:`decode_infer_request`, with
    ``max_response_bytes`` bounding all outputs together; a response with no
    outputs is allowed. Malformed outputs raise :class:`~core.errors.InvalidInput`.
    """
    outputs = _decode_tensors(
        pb.outputs,
        pb.raw_output_contents,
        what="output",
        raw_field="raw_output_contents",
        message="response",
        max_bytes=max_response_bytes,
        max_elements=max_elements,
    )
    return InferResponse(
        model_name=pb.model_name,
        outputs=outputs,
        model_version=pb.model_version,
        id=pb.id,
        parameters=params_from_pb(pb.parameters),
    )


def _requested_outputs(
    outputs: Sequence[ModelInferRequest.InferRequestedOutputTensor],
) -> tuple[str, ...]:
    return requested_output_names([output.name for output in outputs])


def requested_output_names(requested: Sequence[str]) -> tuple[str, ...]:
    """The names of a request's requested outputs, checked: none empty, none twice.

    Shared by every transport (gRPC messages, REST documents); raises
    :class:`~core.errors.InvalidInput` naming the output.
    """
    names: list[str] = []
    for index, name in enumerate(requested):
        if not name:
            raise InvalidInput(f"requested output #{index} has an empty name")
        if name in names:
            raise InvalidInput(f"requested output '{name}' appears more than once")
        names.append(name)
    return tuple(names)


def _decode_tensors(
    tensors: Sequence,
    raw_contents: Sequence[bytes],
    *,
    what: str,
    raw_field: str,
    message: str,
    max_bytes: int,
    max_elements: int,
) -> dict[str, np.ndarray]:
    """Decode the tensors of one message; ``what`` is ``input`` or ``output``."""
    if raw_contents and len(raw_contents) != len(tensors):
        if len(raw_contents) < len(tensors):
            missing = tensors[len(raw_contents)].name
            raise InvalidInput(
                f"{what} '{missing}' has no {raw_field} entry "
                f"({len(raw_contents)} entries for {len(tensors)} {what}s)"
            )
        names = ", ".join(f"'{tensor.name}'" for tensor in tensors)
        raise InvalidInput(
            f"{raw_field} has {len(raw_contents)} entries for {len(tensors)} {what}s ({names})"
        )

    arrays: dict[str, np.ndarray] = {}
    total = 0
    for index, tensor in enumerate(tensors):
        label = tensor_label(what, index, tensor.name, arrays)
        datatype = tensor.datatype
        check_datatype(label, datatype)
        shape = _checked_shape(label, tensor.shape, max_elements)
        count = math.prod(shape)
        typed = tensor.contents.ListFields() if tensor.HasField("contents") else []

        if raw_contents:
            if typed:
                raise InvalidInput(
                    f"{label} has typed contents but the {message} also uses {raw_field}; "
                    f"send every {what} one way or the other"
                )
            data = raw_contents[index]
            total = _add_bytes(label, message, total, len(data), max_bytes)
            array = _from_raw(label, datatype, data, shape, count)
        else:
            array, total = _from_typed(
                label, datatype, typed, shape, count, total, max_bytes, message, raw_field
            )
        if array.flags.writeable:  # raw tensors are views of the message's bytes: read-only
            array.flags.writeable = False
        arrays[tensor.name] = array
    return arrays


def tensor_label(what: str, index: int, name: str, seen: Mapping[str, object]) -> str:
    """``input 'NAME'`` (``what`` and name) for messages; InvalidInput when the name is
    empty or already in ``seen`` (the tensors of the message decoded so far)."""
    if not name:
        raise InvalidInput(f"{what} #{index} has an empty name")
    label = f"{what} '{name}'"
    if name in seen:
        raise InvalidInput(f"{label} appears more than once")
    return label


def check_datatype(label: str, datatype: str) -> None:
    """InvalidInput unless ``datatype`` is a v2 datatype this codec carries."""
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(
            f"{label} has unknown datatype {datatype!r}; expected one of {_KNOWN_DATATYPES}"
        )


def decode_tensor(
    label: str,
    datatype: str,
    dims: Sequence[int],
    *,
    raw: bytes | memoryview | None = None,
    values: np.ndarray | None = None,
    total: int = 0,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    message: str = "request",
    where: str = "data",
) -> tuple[np.ndarray, int]:
    """One tensor of a message, with the checks every v2 transport applies.

    The tensor comes either as ``raw`` bytes (the wire layout of ``raw_input_contents``)
    or as ``values``: a flat numpy array of numbers (any integer or float dtype, bool for
    BOOL) or, for BYTES, an object array of ``bytes``, as a text transport parsed them;
    ``where`` names their field in messages. ``total`` is the tensor bytes of the
    message so far; returns the read-only array and the new total. Raises
    :class:`~core.errors.InvalidInput` naming ``label`` and the problem (datatype, shape,
    byte length, values out of range, size limits).
    """
    check_datatype(label, datatype)
    shape = _checked_shape(label, dims, max_elements)
    count = math.prod(shape)
    if raw is not None:
        total = _add_bytes(label, message, total, len(raw), max_bytes)
        array = _from_raw(label, datatype, raw, shape, count)
    else:
        if values is None or values.ndim != 1 or values.shape[0] != count:
            got = 0 if values is None else values.size
            raise InvalidInput(
                f"{label} has {got} values in {where}; shape {list(shape)} needs {count}")
        if datatype == "BYTES":
            if values.dtype != object:
                raise InvalidInput(f"{label} is BYTES; its {where} must hold strings")
            total = _add_bytes(label, message, total, sum(len(item) for item in values),
                               max_bytes)
            array = values.reshape(shape)
        else:
            total = _add_bytes(label, message, total, count * V2_TO_NUMPY[datatype].itemsize,
                               max_bytes)
            array = _from_wide(label, datatype, values, where).reshape(shape)
    if array.flags.writeable:
        array.flags.writeable = False
    return array, total


def _from_wide(label: str, datatype: str, wide: np.ndarray, where: str) -> np.ndarray:
    """``wide`` (values as parsed) as ``datatype``: integers must fit its range, and
    booleans, integers and floats go only where they belong."""
    dtype = V2_TO_NUMPY[datatype]
    kind = wide.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidInput(f"{label} is BOOL; its {where} must hold true or false")
        return wide
    if dtype.kind in "iu":
        if kind not in "iu":
            raise InvalidInput(f"{label} is {datatype}; its {where} must hold integers")
        if wide.size and not np.can_cast(wide.dtype, dtype):
            info = np.iinfo(dtype)
            bad = np.flatnonzero((wide < info.min) | (wide > info.max))
            if bad.size:
                raise InvalidInput(
                    f"{label} value {int(wide[bad[0]])} at element {int(bad[0])} is out of "
                    f"range for {datatype} [{info.min}, {info.max}]"
                )
        return wide.astype(dtype)
    if kind not in "iuf":
        raise InvalidInput(f"{label} is {datatype}; its {where} must hold numbers")
    return wide.astype(dtype)


def _checked_shape(label: str, dims: Sequence[int], max_elements: int) -> tuple[int, ...]:
    shape = tuple(dims)  # int64 values from the message: already Python ints
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{label} has {len(shape)} dimensions; at most {MAX_RANK} are supported")
    # Zero dimensions aside, the shape must stay within the limit, so that a
    # zero-size tensor cannot smuggle in dimensions no array could hold.
    size = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"{label} has a negative dimension in shape {list(shape)}")
        if dim:
            size *= dim
    if size > max_elements:
        raise InvalidInput(
            f"{label} shape {list(shape)} is too large: over {max_elements} elements"
        )
    return shape


def _add_bytes(label: str, message: str, total: int, nbytes: int, max_bytes: int) -> int:
    total += nbytes
    if total > max_bytes:
        raise InvalidInput(
            f"{label} brings the {message} to {total} bytes of tensor data, "
            f"over the limit of {max_bytes} bytes"
        )
    return total


def _from_raw(
    label: str, datatype: str, data: bytes, shape: tuple[int, ...], count: int
) -> np.ndarray:
    if datatype == "BYTES":
        return _object_array(_split_bytes(label, data, count), shape)
    dtype = V2_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{label} has {len(data)} bytes of raw data; "
            f"shape {list(shape)} of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(data, dtype=np.uint8)
        bad = np.flatnonzero(octets > 1)
        if bad.size:
            raise InvalidInput(
                f"{label} BOOL raw data holds byte {int(octets[bad[0]])} at element "
                f"{int(bad[0])}; only 0 and 1 are allowed"
            )
        return octets.view(np.bool_).reshape(shape)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _split_bytes(label: str, data: bytes, count: int) -> list[bytes]:
    """Split a raw BYTES buffer into ``count`` length-prefixed elements."""
    view = memoryview(data)
    size = len(data)
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + _LENGTH_PREFIX.size > size:
            raise InvalidInput(
                f"{label} BYTES raw data is truncated: element {index} of {count} "
                f"has no complete 4-byte length prefix"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(data, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > size:
            raise InvalidInput(
                f"{label} BYTES raw data is truncated: element {index} declares "
                f"{length} bytes but only {size - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != size:
        raise InvalidInput(
            f"{label} BYTES raw data has {size - offset} bytes left over after {count} elements"
        )
    return items


def _from_typed(
    label: str,
    datatype: str,
    present: list,
    shape: tuple[int, ...],
    count: int,
    total: int,
    max_bytes: int,
    message: str,
    raw_field: str,
) -> tuple[np.ndarray, int]:
    """Build an array from typed contents; returns it and the new byte total."""
    field = _TYPED_FIELD.get(datatype)
    for descriptor, _values in present:
        if descriptor.name != field:
            if field is None:
                raise InvalidInput(
                    f"{label} is {datatype}, which has no typed contents field; "
                    f"send it in {raw_field}"
                )
            raise InvalidInput(
                f"{label} is {datatype} but has values in contents.{descriptor.name}; "
                f"{datatype} uses contents.{field}"
            )
    values = present[0][1] if present else ()
    if len(values) != count:
        if not present and field is None:
            raise InvalidInput(f"{label} has no data; {datatype} must be sent in {raw_field}")
        if not present:
            raise InvalidInput(
                f"{label} has no data: shape {list(shape)} needs {count} values "
                f"in contents.{field} or {raw_field}"
            )
        raise InvalidInput(
            f"{label} has {len(values)} values in contents.{field}; "
            f"shape {list(shape)} needs {count}"
        )

    if datatype == "BYTES":
        items = list(values)
        total = _add_bytes(label, message, total, sum(len(item) for item in items), max_bytes)
        return _object_array(items, shape), total

    dtype = V2_TO_NUMPY[datatype]
    total = _add_bytes(label, message, total, count * dtype.itemsize, max_bytes)
    if not count:
        return np.empty(shape, dtype=dtype), total
    wide = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=count)
    return _from_wide(label, datatype, wide, f"contents.{field}").reshape(shape), total


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


# --------------------------------------------------------------------------- encoding


def encode_infer_request(req: InferRequest, *, raw: bool = True) -> ModelInferRequest:
    """Encode an :class:`~core.tensors.InferRequest` as a v2 ``ModelInferRequest``.

    With ``raw=True`` (the default, and what servers expect for speed) tensors go
    in ``raw_input_contents``; with ``raw=False`` they go in typed ``contents``,
    and an FP16 input raises ``ValueError`` because v2 has no typed field for it
    (and one message cannot mix raw and typed tensors). An array with no v2
    datatype, or a BYTES element that is neither bytes nor str, raises
    ``ValueError``; str elements are sent as UTF-8.
    """
    pb = ModelInferRequest(model_name=req.model_name, model_version=req.model_version, id=req.id)
    params_to_pb(req.parameters, pb.parameters)
    for name, array in req.inputs.items():
        tensor = pb.inputs.add()
        _fill_tensor(tensor, name, array, pb.raw_input_contents if raw else None)
    for name in req.requested_outputs:
        pb.outputs.add(name=name)
    return pb


def encode_infer_response(resp: InferResponse, *, raw: bool = True) -> ModelInferResponse:
    """Encode an :class:`~core.tensors.InferResponse` as a v2 ``ModelInferResponse``.

    Outputs go in ``raw_output_contents`` by default; ``raw=False`` fills typed
    ``contents`` instead, with the same rules as :func:`encode_infer_request`.
    """
    pb = ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    params_to_pb(resp.parameters, pb.parameters)
    for name, array in resp.outputs.items():
        tensor = pb.outputs.add()
        _fill_tensor(tensor, name, array, pb.raw_output_contents if raw else None)
    return pb


def _fill_tensor(tensor, name: str, array: np.ndarray, raw_contents) -> None:
    """Fill one v2 tensor; raw data goes to ``raw_contents`` unless it is None."""
    array = np.asarray(array)
    datatype = _RAW_AS_IS.get(array.dtype) if raw_contents is not None else None
    if datatype is not None:
        # The usual output (a little-endian numeric array): its bytes as they are.
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        raw_contents.append(array.tobytes())
        return
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError:
        message = f"tensor '{name}' has dtype {array.dtype}, which v2 cannot carry"
        raise ValueError(message) from None
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    if raw_contents is not None:
        raw_contents.append(_raw_bytes(name, datatype, array))
        return
    field = _TYPED_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"tensor '{name}' is {datatype}, which v2 can only send raw")
    contents: InferTensorContents = tensor.contents
    if datatype == "BYTES":
        contents.bytes_contents.extend(_element_bytes(name, item) for item in array.flat)
    else:
        values = np.asarray(array, dtype=V2_TO_NUMPY[datatype]).ravel().tolist()
        getattr(contents, field).extend(values)
    # An empty tensor still marks its contents as present.
    tensor.contents.SetInParent()


_RAW_AS_IS: Mapping[np.dtype, str] = {
    dtype.newbyteorder("<"): name
    for name, dtype in V2_TO_NUMPY.items()
    if name not in ("BYTES", "BOOL")
}
"""Little-endian numeric dtypes whose array bytes are the v2 raw bytes as they are."""


def _raw_bytes(name: str, datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.flat:
            data = _element_bytes(name, item)
            parts.append(_LENGTH_PREFIX.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    # astype fixes the byte order; tobytes always writes row-major order.
    return np.asarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()


def tensor_to_raw(name: str, array: np.ndarray) -> tuple[str, bytes]:
    """``(datatype, raw bytes)`` of one array, as v2 carries it raw.

    ``ValueError`` for an array v2 cannot carry (as the encoders).
    """
    array = np.asarray(array)
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError:
        raise ValueError(f"tensor '{name}' has dtype {array.dtype}, which v2 cannot carry") \
            from None
    return datatype, _raw_bytes(name, datatype, array)


def tensor_from_raw(label: str, datatype: str, shape: Sequence[int], data: bytes) -> np.ndarray:
    """The array that v2 raw bytes of ``datatype`` and ``shape`` hold (read-only).

    :class:`~core.errors.InvalidInput` names ``label`` when the datatype is
    unknown or the bytes do not fit the shape.
    """
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"{label} has unknown datatype {datatype!r}")
    shape = _checked_shape(label, shape, DEFAULT_MAX_ELEMENTS)
    array = _from_raw(label, datatype, data, shape, math.prod(shape))
    if array.flags.writeable:
        array.flags.writeable = False
    return array


def _element_bytes(name: str, item: object) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise ValueError(
        f"tensor '{name}' holds a {type(item).__name__} element; BYTES elements must be bytes "
        f"or str"
    )
