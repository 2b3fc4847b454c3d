"""The v2 REST codec: Open Inference Protocol documents over HTTP, as KServe and Triton
define them.

Turns the body of ``POST /v2/models/{name}/infer`` into the
:class:`~core.tensors.InferRequest` the gRPC path builds, with the same checks
(each tensor goes through :func:`core.codec.decode_tensor`: datatype, shape, byte
length, values, size limits), and an :class:`~core.tensors.InferResponse` into the
document (and binary data) a REST client reads. Nothing here knows an HTTP server;
``core.v2_http`` serves these documents.

Request document
    ``{"id", "parameters", "inputs": [{"name", "datatype", "shape", "data",
    "parameters"}], "outputs": [{"name", "parameters"}]}``. ``data`` is a flat or
    nested (row-major) list: numbers, ``true``/``false`` for BOOL, strings for BYTES
    (sent as their UTF-8 bytes). FP16 may travel in JSON here, unlike gRPC's typed
    contents.

Binary tensor extension
    With the ``Inference-Header-Content-Length`` header, the body is a JSON document
    of that many bytes followed by the binary data of every input whose parameters
    carry ``binary_data_size``, in input order, each laid out as gRPC's raw contents
    (little-endian; BYTES elements with a 4-byte length prefix). An output is
    answered in binary when its ``parameters.binary_data`` is true or, when it does
    not say, when the request's ``parameters.binary_data_output`` is true; the reply
    then carries the length of its JSON document in the same header.

Parameters
    Request parameters reach the data plane as gRPC's do (``route``,
    ``confidence_threshold``), but for two: ``binary_data_output`` (above) and
    ``timeout``, the microseconds the caller gives the request (what
    ``tritonclient.http`` sends): the latency budget, as the gRPC deadline is.
    Response parameters are the data plane's (``route``, ``reason``,
    ``confidence``, ``model_version`` on the agent), as on gRPC.

Errors
    Anything malformed raises :class:`~core.errors.InvalidInput` naming the part of
    the document and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import (
    NO_PARAMETERS,
    V2_TO_NUMPY,
    InferRequest,
    InferResponse,
    ModelInfo,
    ParamValue,
    v2_datatype,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header: bytes of the JSON document at the head of a body with binary data."""
BINARY_SIZE = "binary_data_size"
"""Input (and answered output) parameter: bytes of its binary data."""
BINARY_OUTPUT = "binary_data"
"""Requested-output parameter: answer this output in binary."""
BINARY_ALL = "binary_data_output"
"""Request parameter: answer every output that does not say otherwise in binary."""
TIMEOUT_PARAM = "timeout"
"""Request parameter: microseconds the caller gives the request (its latency budget)."""
EXTENSIONS = ("binary_tensor_data",)
"""What ``GET /v2`` lists as supported extensions."""

_TRANSPORT_PARAMS = frozenset({BINARY_ALL, TIMEOUT_PARAM})
"""Request parameters the REST transport consumes; the data plane never sees them."""
_NOT_SUPPORTED = ("classification", "shared_memory_region")
"""Triton extensions this server does not offer: refused rather than ignored."""


class RestRequest(NamedTuple):
    """A decoded REST infer request: the transport-neutral request and how to answer it."""

    request: InferRequest
    binary_outputs: Mapping[str, bool]
    """Outputs that said whether they want binary data."""
    binary_by_default: bool
    """Binary data for every other output (``binary_data_output``)."""
    time_left_s: float | None
    """The caller's latency budget (``timeout``), None when not given."""

    def binary(self, output: str) -> bool:
        """True when ``output`` is answered in binary."""
        return self.binary_outputs.get(output, self.binary_by_default)


def header_length(value: str | None, body_bytes: int) -> int | None:
    """The ``Inference-Header-Content-Length`` of a request, checked against its body."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise InvalidInput(f"{HEADER_LENGTH} must be a number of bytes (got {value[:32]!r})")
    length = int(text)
    if length > body_bytes:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body has only "
                           f"{body_bytes} bytes")
    return length


def _document(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not valid JSON ({exc.msg} at line {exc.lineno}, "
                           f"column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InvalidInput("the request's JSON is not UTF-8 text") from None
    except RecursionError:
        raise InvalidInput("the request's JSON is nested too deeply") from None
    if type(doc) is not dict:
        raise InvalidInput(f"the request must be a JSON object (got {_kind(doc)})")
    return doc


def _kind(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    return {dict: "an object", list: "an array", str: "a string", bool: "true or false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "?")


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidInput(f"{what} must be a JSON object (got {_kind(value)})")
    return value


def _string(value: object, what: str) -> str:
    if type(value) is not str:
        raise InvalidInput(f"{what} must be a string (got {_kind(value)})")
    return value


def parameters(value: object, what: str = "the request's parameters"
               ) -> Mapping[str, ParamValue]:
    """A JSON ``parameters`` object as v2 parameters (the checks of ``core.codec``)."""
    params = _object(value, what)
    if not params:
        return NO_PARAMETERS
    for key, item in params.items():
        codec.check_parameter(key, item)
    return params


def decode_infer_request(
    body: bytes,
    model_name: str,
    model_version: str = "",
    *,
    json_bytes: int | None = None,
    max_request_bytes: int = codec.DEFAULT_MAX_REQUEST_BYTES,
    max_elements: int = codec.DEFAULT_MAX_ELEMENTS,
) -> RestRequest:
    """Decode and check the body of a REST infer request for ``model_name``.

    ``json_bytes`` is the request's ``Inference-Header-Content-Length`` (see
    :func:`header_length`): the body holds binary data after that many bytes of JSON;
    None when the whole body is JSON. ``max_request_bytes`` bounds the tensor bytes of
    all inputs together and ``max_elements`` the elements of each, as on gRPC.
    """
    view = memoryview(body)
    doc = _document(body if json_bytes is None else body[:json_bytes])
    binary = view[json_bytes:] if json_bytes is not None else view[:0]
    inputs_doc = doc.get("inputs")
    if type(inputs_doc) is not list or not inputs_doc:
        raise InvalidInput("the request has no inputs" if not inputs_doc
                           else f"'inputs' must be an array (got {_kind(inputs_doc)})")
    inputs: dict[str, np.ndarray] = {}
    total = offset = 0
    for index, tensor in enumerate(inputs_doc):
        if type(tensor) is not dict:
            raise InvalidInput(f"input #{index} must be a JSON object (got {_kind(tensor)})")
        name = _string(tensor.get("name"), f"the name of input #{index}")
        label = codec.tensor_label("input", index, name, inputs)
        datatype = _string(tensor.get("datatype"), f"the datatype of {label}")
        codec.check_datatype(label, datatype)
        shape = _shape(tensor.get("shape"), label)
        tensor_params = _object(tensor.get("parameters"), f"the parameters of {label}")
        if tensor_params:
            _refuse_unsupported(tensor_params, label)
        size = tensor_params.get(BINARY_SIZE)
        data = tensor.get("data")
        if size is not None:
            if data is not None:
                raise InvalidInput(f"{label} has both data and {BINARY_SIZE}; send it one way")
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{BINARY_SIZE} of {label} must be a number of bytes")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{label} needs {size} bytes of binary data but only "
                    f"{len(binary) - offset} remain after the JSON"
                    + ("" if json_bytes is not None else f" (no {HEADER_LENGTH} header)"))
            array, total = codec.decode_tensor(
                label, datatype, shape, raw=binary[offset:offset + size], total=total,
                max_bytes=max_request_bytes, max_elements=max_elements,
                where=BINARY_SIZE)
            offset += size
        else:
            if data is None:
                raise InvalidInput(f"{label} has no data (neither data nor {BINARY_SIZE})")
            array, total = codec.decode_tensor(
                label, datatype, shape, values=_values(data, datatype, label), total=total,
                max_bytes=max_request_bytes, max_elements=max_elements)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no "
                           f"input's {BINARY_SIZE} accounts for")

    params = parameters(doc.get("parameters"))
    binary_by_default = False
    time_left_s = None
    if params and not _TRANSPORT_PARAMS.isdisjoint(params):
        params = dict(params)
        binary_by_default = params.pop(BINARY_ALL, False)
        if type(binary_by_default) is not bool:
            raise InvalidInput(f"parameter '{BINARY_ALL}' must be true or false")
        timeout = params.pop(TIMEOUT_PARAM, None)
        if timeout is not None:
            if type(timeout) not in (int, float) or not timeout >= 0:
                raise InvalidInput(f"parameter '{TIMEOUT_PARAM}' must be a number of "
                                   "microseconds, 0 or more")
            time_left_s = timeout / 1e6
    names, binary_outputs = _requested(doc.get("outputs"))
    request_id = doc.get("id", "")
    return RestRequest(
        InferRequest(model_name=model_name, inputs=inputs, model_version=model_version,
                     id=_string(request_id, "the request's id"),
                     parameters=params or NO_PARAMETERS, requested_outputs=names),
        binary_outputs, binary_by_default, time_left_s)


def _shape(value: object, label: str) -> tuple[int, ...]:
    if type(value) is not list or any(type(dim) is not int for dim in value):
        raise InvalidInput(f"the shape of {label} must be an array of integers")
    return tuple(value)


def _values(data: object, datatype: str, label: str) -> np.ndarray:
    """The ``data`` of an input as one flat array, as parsed (range checks come later)."""
    if type(data) is not list:
        raise InvalidInput(f"the data of {label} must be an array (got {_kind(data)})")
    if datatype == "BYTES":
        items: list[bytes] = []
        _flatten_strings(data, items, label)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"the data of {label} is not a rectangular array of "
                           f"{datatype} values") from None
    if array.size == 0:
        return np.empty(0, dtype=V2_TO_NUMPY[datatype])
    if array.dtype.kind in "fO" and V2_TO_NUMPY[datatype].kind in "iu":
        return _wide_integers(array.ravel(), data, datatype, label)
    return array.ravel()


def _wide_integers(values: np.ndarray, data: list, datatype: str, label: str) -> np.ndarray:
    """Integers numpy could not hold in one integer dtype (both sides of 2**63: it made
    floats or objects of them), as ``datatype``; ``values`` as they are otherwise."""
    items = values.tolist() if values.dtype == object else _flat(data)
    if not all(type(item) is int for item in items):
        return values  # the codec names what the data should hold
    try:
        return np.array(items, dtype=V2_TO_NUMPY[datatype])
    except OverflowError:
        raise InvalidInput(f"{label} has a value out of range for {datatype}") from None


def _flat(data: list) -> list:
    out: list = []
    for item in data:
        if type(item) is list:
            out.extend(_flat(item))
        else:
            out.append(item)
    return out


def _flatten_strings(data: list, out: list[bytes], label: str, depth: int = 0) -> None:
    if depth > codec.MAX_RANK:
        raise InvalidInput(f"the data of {label} is nested deeper than {codec.MAX_RANK}")
    for item in data:
        if type(item) is str:
            out.append(item.encode("utf-8", "surrogatepass"))
        elif type(item) is list:
            _flatten_strings(item, out, label, depth + 1)
        else:
            raise InvalidInput(f"{label} is BYTES; its data must hold strings "
                               f"(got {_kind(item)})")


def _refuse_unsupported(params: Mapping[str, object], owner: str) -> None:
    for unsupported in _NOT_SUPPORTED:
        if unsupported in params:
            raise InvalidInput(f"{owner}: parameter {unsupported!r} is not supported by this "
                               "server")


def _requested(value: object) -> tuple[tuple[str, ...], Mapping[str, bool]]:
    """The names of the requested outputs and which of them said binary or not."""
    if value is None:
        return (), {}
    if type(value) is not list:
        raise InvalidInput(f"'outputs' must be an array (got {_kind(value)})")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, output in enumerate(value):
        if type(output) is not dict:
            raise InvalidInput(f"requested output #{index} must be a JSON object "
                               f"(got {_kind(output)})")
        name = _string(output.get("name"), f"the name of requested output #{index}")
        params = _object(output.get("parameters"),
                         f"the parameters of requested output {name!r}")
        _refuse_unsupported(params, f"requested output {name!r}")
        wants = params.get(BINARY_OUTPUT)
        if wants is not None:
            if type(wants) is not bool:
                raise InvalidInput(f"parameter '{BINARY_OUTPUT}' of requested output "
                                   f"{name!r} must be true or false")
            binary[name] = wants
        names.append(name)
    return codec.requested_output_names(names), binary


# --------------------------------------------------------------------------- answers


def encode_infer_response(response: InferResponse, request: RestRequest | None = None
                          ) -> tuple[bytes, list[bytes]]:
    """The JSON document of an answer and the binary data that follows it (empty when
    every output travels in JSON). ``request`` says which outputs go binary."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        if request is not None and request.binary(name):
            datatype, raw = codec.tensor_to_raw(name, array)
            outputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                            "parameters": {BINARY_SIZE: len(raw)}})
            chunks.append(raw)
        else:
            outputs.append(_json_output(name, np.asarray(array)))
    doc: dict[str, Any] = {"model_name": response.model_name,
                           "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = outputs
    return encode_json(doc), chunks


def _json_output(name: str, array: np.ndarray) -> dict[str, Any]:
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError:
        raise ValueError(f"tensor '{name}' has dtype {array.dtype}, which v2 cannot carry") \
            from None
    if datatype == "BYTES":
        try:
            data: list = [item if type(item) is str else bytes(item).decode("utf-8")
                          for item in array.flat]
        except UnicodeDecodeError:
            raise InvalidInput(f"output {name!r} holds bytes that are not UTF-8 text; ask "
                               f"for it with parameter '{BINARY_OUTPUT}'") from None
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_json(doc: object) -> bytes:
    """A document as compact UTF-8 JSON."""
    return json.dumps(doc, separators=(",", ":")).encode()


def error_document(message: str) -> bytes:
    """The v2 REST error document, ``{"error": "..."}``."""
    return encode_json({"error": message})


def server_metadata(name: str, version: str) -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}``: as gRPC's ModelMetadata, in JSON."""

    def tensors(specs: Sequence) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in specs]

    return {"name": info.name, "versions": list(info.versions), "platform": info.platform,
            "inputs": tensors(info.inputs), "outputs": tensors(info.outputs)}
