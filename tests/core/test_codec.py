"""Tests for the v2 tensor codec (core.codec)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import V2_TO_NUMPY, InferRequest, InferResponse
from edgecloud.protos.inference.grpc_predict_v2_pb2 import (
    InferParameter,
    ModelInferRequest,
    ModelInferResponse,
)

# One sample per v2 datatype, with the extremes of each range.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([[0.5, -1.5], [np.inf, 65504.0]], dtype=np.float16),
    "FP32": np.array([[1.5, -0.0, np.nan], [np.inf, 3.25, -1e30]], dtype=np.float32),
    "FP64": np.array([np.pi, -1e300, np.nan], dtype=np.float64),
    "BYTES": np.array([[b"", b"a\x00b"], [b"\xff\xfe", "é".encode()]], dtype=object),
}
# FP16 has no typed field: test_typed_fp16_is_refused_on_encode covers that case.
ROUND_TRIPS = [
    pytest.param(datatype, raw, id=f"{datatype}-{'raw' if raw else 'typed'}")
    for datatype in SAMPLES
    for raw in (True, False)
    if raw or datatype != "FP16"
]


def _zero_size(datatype: str) -> np.ndarray:
    return np.empty((0, 3), dtype=V2_TO_NUMPY[datatype])


def _wire(message):
    """Serialize and parse again, as the transport would."""
    return type(message).FromString(message.SerializeToString())


def _assert_same_tensor(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert got.dtype == V2_TO_NUMPY[datatype]
    assert got.shape == want.shape
    if datatype == "BYTES":
        assert all(type(item) is bytes for item in got.flat)
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want)


def _raw_request(*tensors: tuple[str, str, list[int], bytes]) -> ModelInferRequest:
    pb = ModelInferRequest(model_name="m")
    for name, datatype, shape, data in tensors:
        pb.inputs.add(name=name, datatype=datatype, shape=shape)
        pb.raw_input_contents.append(data)
    return pb


def _typed_request(name: str, datatype: str, shape: list[int], **contents) -> ModelInferRequest:
    pb = ModelInferRequest(model_name="m")
    tensor = pb.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return pb


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("datatype", "raw"), ROUND_TRIPS)
def test_request_round_trip_every_datatype(datatype: str, raw: bool) -> None:
    """Every v2 datatype survives request encode → wire → decode with dtype, shape and values."""
    array = SAMPLES[datatype]
    request = InferRequest(
        model_name="digits",
        inputs={"first": array, "empty": _zero_size(datatype)},
        model_version="3",
        id="req-1",
        parameters={"route": "cloud"},
        requested_outputs=("probs", "label"),
    )
    decoded = codec.decode_infer_request(_wire(codec.encode_infer_request(request, raw=raw)))
    assert list(decoded.inputs) == ["first", "empty"]
    _assert_same_tensor(decoded.inputs["first"], array, datatype)
    _assert_same_tensor(decoded.inputs["empty"], _zero_size(datatype), datatype)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("digits", "3", "req-1")
    assert decoded.parameters == {"route": "cloud"}
    assert decoded.requested_outputs == ("probs", "label")


@pytest.mark.parametrize(("datatype", "raw"), ROUND_TRIPS)
def test_response_round_trip_every_datatype(datatype: str, raw: bool) -> None:
    """Every v2 datatype survives response encode → wire → decode, raw and typed."""
    array = SAMPLES[datatype]
    response = InferResponse(
        model_name="digits",
        outputs={"out": array, "empty": _zero_size(datatype)},
        model_version="7",
        id="r",
        parameters={"confidence": 0.5},
    )
    decoded = codec.decode_infer_response(_wire(codec.encode_infer_response(response, raw=raw)))
    _assert_same_tensor(decoded.outputs["out"], array, datatype)
    _assert_same_tensor(decoded.outputs["empty"], _zero_size(datatype), datatype)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("digits", "7", "r")
    assert decoded.parameters == {"confidence": 0.5}


def test_response_encoding_is_raw_by_default() -> None:
    """encode_infer_response puts each output in raw_output_contents, with datatype and shape."""
    pb = codec.encode_infer_response(
        InferResponse(model_name="m", outputs={"y": np.zeros((2, 3), np.float32)})
    )
    assert len(pb.raw_output_contents) == 1
    assert (pb.outputs[0].name, pb.outputs[0].datatype) == ("y", "FP32")
    assert list(pb.outputs[0].shape) == [2, 3]
    assert not pb.outputs[0].HasField("contents")


@pytest.mark.parametrize(
    ("array", "wire"),
    [
        (np.array([True, False]), b"\x01\x00"),
        (np.array([1.0], dtype=np.float32), struct.pack("<f", 1.0)),
        (np.array([1], dtype=">i4"), b"\x01\x00\x00\x00"),
        (np.array([[1, 2], [3, 4]], dtype=np.uint8).T, b"\x01\x03\x02\x04"),
        (np.array([b"ab", ""], dtype=object), b"\x02\x00\x00\x00ab\x00\x00\x00\x00"),
        (np.array(["hé"]), b"\x03\x00\x00\x00h\xc3\xa9"),
    ],
    ids=["bool", "fp32", "big-endian", "transposed", "bytes", "unicode"],
)
def test_raw_encoding_is_the_v2_wire_layout(array: np.ndarray, wire: bytes) -> None:
    """Raw tensors are little-endian, row-major, BOOL one byte, BYTES length-prefixed."""
    pb = codec.encode_infer_request(InferRequest(model_name="m", inputs={"x": array}))
    assert pb.raw_input_contents[0] == wire


def test_decoded_arrays_are_read_only() -> None:
    """Decoded arrays are frozen, raw and typed alike, so a caller must copy to change them."""
    request = InferRequest(model_name="m", inputs={"x": np.arange(4, dtype=np.int32)})
    for raw in (True, False):
        decoded = codec.decode_infer_request(codec.encode_infer_request(request, raw=raw))
        with pytest.raises(ValueError):
            decoded.inputs["x"][0] = 9


def test_scalar_tensor_round_trips() -> None:
    """A tensor with an empty shape is a scalar of one element."""
    request = InferRequest(model_name="m", inputs={"t": np.array(2.5, dtype=np.float64)})
    decoded = codec.decode_infer_request(codec.encode_infer_request(request))
    assert decoded.inputs["t"].shape == ()
    assert decoded.inputs["t"][()] == 2.5


def test_empty_typed_contents_beside_raw_data_is_accepted() -> None:
    """An input whose contents message is present but empty does not count as mixing."""
    pb = _raw_request(("x", "INT32", [1], b"\x07\x00\x00\x00"))
    pb.inputs[0].contents.SetInParent()
    assert codec.decode_infer_request(pb).inputs["x"].tolist() == [7]


# --------------------------------------------------------------------------- parameters


def test_parameters_round_trip_with_their_types() -> None:
    """bool, int, uint64-sized int, float and str parameters come back as the same types."""
    values = {"flag": True, "off": False, "n": -3, "big": 2**63 + 5, "ratio": 0.25, "route": "edge"}
    pb = ModelInferResponse()
    codec.params_to_pb(values, pb.parameters)
    decoded = codec.params_from_pb(_wire(pb).parameters)
    assert decoded == values
    assert {key: type(value) for key, value in decoded.items()} == {
        key: type(value) for key, value in values.items()
    }


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (True, "bool_param"),
        (np.bool_(False), "bool_param"),
        (1, "int64_param"),
        (np.int32(-4), "int64_param"),
        (2**64 - 1, "uint64_param"),
        (1.0, "double_param"),
        (np.float32(0.5), "double_param"),
        ("x", "string_param"),
    ],
)
def test_params_to_pb_picks_the_field_by_python_type(value: object, field: str) -> None:
    """A bool is a bool_param, not an int64_param; numpy scalars count as their Python kind."""
    pb = ModelInferResponse()
    codec.params_to_pb({"p": value}, pb.parameters)
    assert pb.parameters["p"].WhichOneof("parameter_choice") == field


def test_uint64_param_decodes_to_int() -> None:
    """A uint64_param from a stock client decodes to a plain int."""
    pb = ModelInferRequest()
    pb.parameters["seq"].CopyFrom(InferParameter(uint64_param=2**64 - 1))
    assert codec.params_from_pb(pb.parameters) == {"seq": 2**64 - 1}


@pytest.mark.parametrize(
    ("value", "error"),
    [([1], TypeError), (None, TypeError), (2**64, ValueError), (-(2**63) - 1, ValueError)],
)
def test_params_to_pb_refuses_unrepresentable_values_and_writes_nothing(
    value: object, error: type[Exception]
) -> None:
    """A value v2 parameters cannot hold raises, and no parameter is written at all."""
    pb = ModelInferResponse()
    with pytest.raises(error, match="'bad'"):
        codec.params_to_pb({"good": 1, "bad": value}, pb.parameters)
    assert len(pb.parameters) == 0


def test_parameter_without_value_is_invalid() -> None:
    """A request parameter with no value set is refused, naming the parameter."""
    pb = _raw_request(("x", "INT8", [1], b"\x01"))
    pb.parameters["route"].SetInParent()
    with pytest.raises(InvalidInput, match="parameter 'route'"):
        codec.decode_infer_request(pb)


# --------------------------------------------------------------------------- malformed requests


def _mixed() -> ModelInferRequest:
    pb = _raw_request(("a", "INT8", [1], b"\x01"), ("pixels", "INT8", [1], b"\x02"))
    pb.inputs[1].contents.int_contents.append(2)
    return pb


def _two_inputs_one_raw() -> ModelInferRequest:
    pb = _raw_request(("a", "INT8", [1], b"\x01"))
    pb.inputs.add(name="pixels", datatype="INT8", shape=[1])
    return pb


def _one_input_two_raw() -> ModelInferRequest:
    pb = _raw_request(("pixels", "INT8", [1], b"\x01"))
    pb.raw_input_contents.append(b"\x02")
    return pb


def _requested(*names: str) -> ModelInferRequest:
    pb = _raw_request(("pixels", "INT8", [1], b"\x01"))
    for name in names:
        pb.outputs.add(name=name)
    return pb


F32 = struct.pack("<f", 1.0)

MALFORMED: list[tuple[str, Callable[[], ModelInferRequest], dict, list[str]]] = [
    (
        "unknown-datatype",
        lambda: _raw_request(("pixels", "FLOAT32", [1], F32)),
        {},
        ["unknown datatype", "FLOAT32"],
    ),
    (
        "lowercase-datatype",
        lambda: _raw_request(("pixels", "fp32", [1], F32)),
        {},
        ["unknown datatype"],
    ),
    (
        "negative-dimension",
        lambda: _raw_request(("pixels", "FP32", [-1, 1], F32)),
        {},
        ["negative dimension"],
    ),
    (
        "overflowing-shape",
        lambda: _raw_request(("pixels", "FP32", [2**62, 2**62], F32)),
        {},
        ["too large"],
    ),
    (
        "huge-dim-beside-zero",
        lambda: _raw_request(("pixels", "FP32", [0, 2**62], b"")),
        {},
        ["too large"],
    ),
    (
        "over-max-elements",
        lambda: _raw_request(("pixels", "UINT8", [10], bytes(10))),
        {"max_elements": 5},
        ["too large", "5 elements"],
    ),
    (
        "too-many-dimensions",
        lambda: _raw_request(("pixels", "UINT8", [1] * 33, b"\x00")),
        {},
        ["33 dimensions"],
    ),
    (
        "raw-too-short",
        lambda: _raw_request(("pixels", "FP32", [2, 3], bytes(20))),
        {},
        ["20 bytes", "needs 24"],
    ),
    (
        "raw-too-long",
        lambda: _raw_request(("pixels", "INT16", [2], bytes(5))),
        {},
        ["5 bytes", "needs 4"],
    ),
    (
        "raw-bool-not-0-or-1",
        lambda: _raw_request(("pixels", "BOOL", [3], b"\x00\x01\x02")),
        {},
        ["byte 2", "element 2"],
    ),
    (
        "typed-count-short",
        lambda: _typed_request("pixels", "FP32", [2, 2], fp32_contents=[1, 2, 3]),
        {},
        ["3 values", "needs 4"],
    ),
    (
        "typed-count-long",
        lambda: _typed_request("pixels", "BYTES", [1], bytes_contents=[b"a", b"b"]),
        {},
        ["2 values", "needs 1"],
    ),
    (
        "typed-wrong-field",
        lambda: _typed_request("pixels", "FP32", [1], int_contents=[1]),
        {},
        ["contents.int_contents", "contents.fp32_contents"],
    ),
    (
        "typed-int64-in-int-field",
        lambda: _typed_request("pixels", "INT64", [1], int_contents=[1]),
        {},
        ["contents.int64_contents"],
    ),
    (
        "typed-two-fields",
        lambda: _typed_request("pixels", "INT32", [1], int_contents=[1], fp64_contents=[1.0]),
        {},
        ["contents.fp64_contents"],
    ),
    (
        "typed-fp16",
        lambda: _typed_request("pixels", "FP16", [1], fp32_contents=[1.0]),
        {},
        ["FP16", "raw_input_contents"],
    ),
    (
        "fp16-without-data",
        lambda: _typed_request("pixels", "FP16", [1]),
        {},
        ["no data", "raw_input_contents"],
    ),
    (
        "typed-without-data",
        lambda: _typed_request("pixels", "INT32", [2]),
        {},
        ["no data", "contents.int_contents"],
    ),
    (
        "uint8-out-of-range",
        lambda: _typed_request("pixels", "UINT8", [2], uint_contents=[1, 300]),
        {},
        ["300", "out of range", "UINT8"],
    ),
    (
        "uint16-out-of-range",
        lambda: _typed_request("pixels", "UINT16", [1], uint_contents=[70000]),
        {},
        ["70000", "UINT16"],
    ),
    (
        "int8-out-of-range",
        lambda: _typed_request("pixels", "INT8", [2], int_contents=[-129, 0]),
        {},
        ["-129", "INT8"],
    ),
    (
        "int16-out-of-range",
        lambda: _typed_request("pixels", "INT16", [1], int_contents=[40000]),
        {},
        ["40000", "INT16"],
    ),
    ("raw-and-typed-mixed", _mixed, {}, ["typed contents", "raw_input_contents"]),
    ("fewer-raw-entries", _two_inputs_one_raw, {}, ["no raw_input_contents entry"]),
    ("more-raw-entries", _one_input_two_raw, {}, ["2 entries for 1 inputs"]),
    (
        "duplicate-name",
        lambda: _raw_request(("pixels", "INT8", [1], b"\x01"), ("pixels", "INT8", [1], b"\x01")),
        {},
        ["more than once"],
    ),
    (
        "over-request-bytes",
        lambda: _raw_request(("pixels", "FP32", [5], bytes(20))),
        {"max_request_bytes": 16},
        ["20 bytes", "limit of 16"],
    ),
    (
        "over-request-bytes-in-total",
        lambda: _raw_request(("a", "FP32", [3], bytes(12)), ("pixels", "FP32", [3], bytes(12))),
        {"max_request_bytes": 16},
        ["24 bytes", "limit of 16"],
    ),
    (
        "over-request-bytes-typed",
        lambda: _typed_request("pixels", "BYTES", [2], bytes_contents=[b"x" * 10, b"y" * 10]),
        {"max_request_bytes": 16},
        ["limit of 16"],
    ),
    (
        "bytes-prefix-truncated",
        lambda: _raw_request(("pixels", "BYTES", [1], b"\x05\x00")),
        {},
        ["truncated", "length prefix"],
    ),
    (
        "bytes-element-truncated",
        lambda: _raw_request(("pixels", "BYTES", [1], b"\x05\x00\x00\x00ab")),
        {},
        ["truncated", "declares 5 bytes"],
    ),
    (
        "bytes-too-few-elements",
        lambda: _raw_request(("pixels", "BYTES", [2], b"\x01\x00\x00\x00a")),
        {},
        ["truncated", "element 1 of 2"],
    ),
    (
        "bytes-left-over",
        lambda: _raw_request(("pixels", "BYTES", [1], b"\x01\x00\x00\x00ab")),
        {},
        ["1 bytes left over"],
    ),
    (
        "bytes-huge-length",
        lambda: _raw_request(("pixels", "BYTES", [1], b"\xff\xff\xff\xff")),
        {},
        ["truncated"],
    ),
]


@pytest.mark.parametrize(
    ("build", "limits", "fragments"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_request_is_invalid_input_naming_the_input(
    build: Callable[[], ModelInferRequest], limits: dict, fragments: list[str]
) -> None:
    """Each malformed request raises InvalidInput whose message names 'pixels' and the problem."""
    with pytest.raises(InvalidInput) as info:
        codec.decode_infer_request(_wire(build()), **limits)
    message = info.value.message
    assert "'pixels'" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: ModelInferRequest(model_name="m"), "no inputs"),
        (lambda: _raw_request(("", "INT8", [1], b"\x01")), "input #0 has an empty name"),
        (lambda: _requested("probs", ""), "requested output #1 has an empty name"),
        (lambda: _requested("probs", "probs"), "requested output 'probs' appears more"),
    ],
    ids=["no-inputs", "empty-input-name", "empty-output-name", "duplicate-output"],
)
def test_request_without_usable_names_is_invalid_input(
    build: Callable[[], ModelInferRequest], fragment: str
) -> None:
    """A request with no inputs, a nameless input or a repeated output name is refused."""
    with pytest.raises(InvalidInput, match=fragment):
        codec.decode_infer_request(build())


def test_malformed_error_is_not_a_value_error() -> None:
    """Decoding errors are domain errors (INVALID_ARGUMENT), never a bare numpy or struct error."""
    with pytest.raises(InvalidInput) as info:
        codec.decode_infer_request(_raw_request(("pixels", "FP64", [3], bytes(7))))
    assert type(info.value) is InvalidInput


# --------------------------------------------------------------------------- malformed responses


def _response(*tensors: tuple[str, str, list[int], bytes]) -> ModelInferResponse:
    pb = ModelInferResponse(model_name="m")
    for name, datatype, shape, data in tensors:
        pb.outputs.add(name=name, datatype=datatype, shape=shape)
        pb.raw_output_contents.append(data)
    return pb


def _response_mixed() -> ModelInferResponse:
    pb = _response(("scores", "INT8", [1], b"\x01"))
    pb.outputs[0].contents.int_contents.append(1)
    return pb


def _response_typed_out_of_range() -> ModelInferResponse:
    pb = ModelInferResponse(model_name="m")
    pb.outputs.add(name="scores", datatype="UINT8", shape=[1]).contents.uint_contents.append(256)
    return pb


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: _response(("scores", "FP32", [2], bytes(4))), "needs 8"),
        (lambda: _response(("scores", "XX", [1], b"")), "unknown datatype"),
        (lambda: _response(("scores", "BYTES", [1], b"\x09")), "truncated"),
        (_response_mixed, "raw_output_contents"),
        (_response_typed_out_of_range, "out of range"),
    ],
    ids=["raw-length", "datatype", "bytes", "mixed", "range"],
)
def test_malformed_response_is_invalid_input_naming_the_output(
    build: Callable[[], ModelInferResponse], fragment: str
) -> None:
    """A malformed response raises InvalidInput naming output 'scores' and the problem."""
    with pytest.raises(InvalidInput, match=fragment) as info:
        codec.decode_infer_response(build())
    assert "output 'scores'" in info.value.message


# --------------------------------------------------------------------------- encoding errors


def test_typed_fp16_is_refused_on_encode() -> None:
    """raw=False cannot carry FP16 (v2 has no typed field for it) and says so with ValueError."""
    request = InferRequest(model_name="m", inputs={"half": SAMPLES["FP16"]})
    with pytest.raises(ValueError, match="'half'"):
        codec.encode_infer_request(request, raw=False)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize(
    "array",
    [np.array([1 + 2j]), np.array([3], dtype=object), np.array(["2024"], dtype="datetime64[D]")],
    ids=["complex", "int-in-object", "datetime"],
)
def test_unrepresentable_array_is_refused_on_encode(array: np.ndarray, raw: bool) -> None:
    """An array with no v2 form raises ValueError naming the tensor."""
    response = InferResponse(model_name="m", outputs={"odd": array})
    with pytest.raises(ValueError, match="'odd'"):
        codec.encode_infer_response(response, raw=raw)
