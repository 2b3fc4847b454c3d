"""Properties of the v2 REST codec (core.v2_rest), on generated tensors and bodies."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from properties import PROPERTIES

from edgecloud.core import codec, v2_rest
from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import V2_TO_NUMPY, InferResponse

NUMERIC = [name for name in V2_TO_NUMPY if name != "BYTES"]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def numeric_arrays(draw) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(NUMERIC))
    return datatype, draw(hnp.arrays(V2_TO_NUMPY[datatype], SHAPES))


@st.composite
def bytes_arrays(draw) -> np.ndarray:
    shape = draw(SHAPES)
    count = int(np.prod(shape))
    items = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _json_request(name: str, datatype: str, array: np.ndarray, nested: bool) -> bytes:
    data = array.tolist() if nested and array.ndim else array.reshape(-1).tolist()
    return json.dumps({"inputs": [{"name": name, "datatype": datatype,
                                   "shape": list(array.shape), "data": data}]}).encode()


def _binary_request(name: str, array: np.ndarray) -> tuple[bytes, int]:
    datatype, raw = codec.tensor_to_raw(name, array)
    header = json.dumps({"inputs": [{"name": name, "datatype": datatype,
                                     "shape": list(array.shape),
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, len(header)


@PROPERTIES
@given(numeric_arrays(), st.booleans())
def test_numeric_json_tensors_round_trip(case, nested: bool) -> None:
    """Any numeric tensor sent as JSON data (flat or nested) decodes to its dtype, shape and
    values, read-only, as the gRPC codec decodes it."""
    datatype, array = case
    decoded = v2_rest.decode_infer_request(_json_request("x", datatype, array, nested), "m")
    got = decoded.request.inputs["x"]
    assert got.dtype == V2_TO_NUMPY[datatype] and got.shape == array.shape
    assert not got.flags.writeable
    np.testing.assert_array_equal(got, array)


@PROPERTIES
@given(st.one_of(numeric_arrays().map(lambda case: case[1]), bytes_arrays()))
def test_binary_tensors_round_trip(array: np.ndarray) -> None:
    """Any tensor sent as binary data decodes to exactly its bytes (BYTES: its elements)."""
    body, header = _binary_request("x", array)
    got = v2_rest.decode_infer_request(body, "m", json_bytes=header).request.inputs["x"]
    assert got.shape == array.shape
    if array.dtype == object:
        assert got.tolist() == array.tolist()
    else:
        assert got.tobytes() == array.tobytes()


@PROPERTIES
@given(bytes_arrays().filter(lambda a: all(_utf8(item) for item in a.flat)))
def test_text_tensors_round_trip_as_json(array: np.ndarray) -> None:
    """BYTES elements that are UTF-8 text travel as JSON strings and come back as bytes."""
    text = np.empty(array.size, dtype=object)
    text[:] = [item.decode() for item in array.flat]
    body = _json_request("s", "BYTES", text.reshape(array.shape), nested=True)
    got = v2_rest.decode_infer_request(body, "m").request.inputs["s"]
    assert got.shape == array.shape and got.tolist() == array.tolist()


def _utf8(item: bytes) -> bool:
    try:
        item.decode()
    except UnicodeDecodeError:
        return False
    return True


@PROPERTIES
@given(numeric_arrays(), st.booleans())
def test_answers_round_trip(case, binary: bool) -> None:
    """An answer's outputs come back from its JSON data or its binary data unchanged, with
    the answer's parameters."""
    datatype, array = case
    answer = InferResponse(model_name="m", outputs={"y": array}, model_version="3",
                           parameters={"route": "edge", "confidence": "0.5"})
    request = v2_rest.RestRequest(None, {}, binary, None)  # type: ignore[arg-type]
    document, chunks = v2_rest.encode_infer_response(answer, request)
    doc = json.loads(document)
    assert doc["parameters"] == {"route": "edge", "confidence": "0.5"}
    (out,) = doc["outputs"]
    assert out["datatype"] == datatype and out["shape"] == list(array.shape)
    if binary:
        got = codec.tensor_from_raw("y", datatype, out["shape"], b"".join(chunks))
        assert got.tobytes() == array.tobytes()
    else:
        assert not chunks
        got = np.array(out["data"], dtype=V2_TO_NUMPY[datatype]).reshape(array.shape)
        np.testing.assert_array_equal(got, array)


@PROPERTIES
@given(st.binary(max_size=400), st.one_of(st.none(), st.integers(0, 400)))
def test_random_bodies_are_refused_cleanly(body: bytes, json_bytes: int | None) -> None:
    """Random bytes, with or without a header length, decode or raise InvalidInput."""
    try:
        length = v2_rest.header_length(None if json_bytes is None else str(json_bytes),
                                       len(body))
        v2_rest.decode_infer_request(body, "m", json_bytes=length)
    except InvalidInput:
        pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "datatype", "shape", "data", "parameters", "inputs",
                         "outputs", "binary_data_size", "binary_data", "id", "timeout",
                         "binary_data_output", "route"]), inner, max_size=5),
    max_leaves=30)


@PROPERTIES
@given(JSON_VALUES, st.sampled_from([*NUMERIC, "BYTES", "FP8"]))
def test_random_documents_are_refused_cleanly(value, datatype: str) -> None:
    """Any JSON document, alone or as an input's fields, decodes or raises InvalidInput."""
    documents = [value, {"inputs": [value]}, {"inputs": [{"name": "x", "datatype": datatype,
                                                          "shape": [2], "data": value}]},
                 {"inputs": [{"name": "x", "datatype": datatype, "shape": value,
                              "data": [1, 2]}], "parameters": value, "outputs": value}]
    for doc in documents:
        try:
            v2_rest.decode_infer_request(json.dumps(doc).encode(), "m")
        except InvalidInput:
            pass
