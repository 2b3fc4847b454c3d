"""Properties of the v2 tensor codec (core.codec), on generated tensors and messages."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from properties import PROPERTIES

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import V2_TO_NUMPY, InferRequest
from edgecloud.protos.inference.grpc_predict_v2_pb2 import ModelInferRequest

NUMERIC = [name for name in V2_TO_NUMPY if name != "BYTES"]
TYPED_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def numeric_arrays(draw) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(NUMERIC))
    array = draw(hnp.arrays(V2_TO_NUMPY[datatype], SHAPES))
    return datatype, array


@st.composite
def bytes_arrays(draw) -> np.ndarray:
    shape = draw(SHAPES)
    items = draw(st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)),
                          max_size=int(np.prod(shape))))
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _wire(message: ModelInferRequest) -> ModelInferRequest:
    return ModelInferRequest.FromString(message.SerializeToString())


@PROPERTIES
@given(numeric_arrays(), st.booleans())
def test_numeric_tensors_round_trip(case, raw: bool) -> None:
    """Any numeric tensor comes back from encode → wire → decode with its dtype, shape and
    values (raw: its exact bytes), read-only; FP16 travels raw only."""
    datatype, array = case
    raw = raw or datatype == "FP16"
    request = InferRequest(model_name="m", inputs={"x": array})
    decoded = codec.decode_infer_request(_wire(codec.encode_infer_request(request, raw=raw)))
    got = decoded.inputs["x"]
    assert got.dtype == V2_TO_NUMPY[datatype]
    assert got.shape == array.shape
    assert not got.flags.writeable
    if raw:
        assert got.tobytes() == array.tobytes()
    else:
        np.testing.assert_array_equal(got, array)


@PROPERTIES
@given(bytes_arrays(), st.booleans())
def test_bytes_tensors_round_trip(array: np.ndarray, raw: bool) -> None:
    """Any BYTES tensor comes back element for element, raw and typed."""
    request = InferRequest(model_name="m", inputs={"s": array})
    got = codec.decode_infer_request(
        _wire(codec.encode_infer_request(request, raw=raw))).inputs["s"]
    assert got.shape == array.shape
    assert got.tolist() == array.tolist()
    assert all(type(item) is bytes for item in got.flat)


DATATYPES = st.sampled_from([*V2_TO_NUMPY, "FP8", "", "fp32", "STRING"])
DIMS = st.one_of(st.integers(-2, 6), st.integers(2**20, 2**62))


@st.composite
def odd_requests(draw) -> ModelInferRequest:
    """Requests as a careless or hostile client might send them: any datatype string, any
    shape, raw bytes that may not fit, typed values in any field, or both."""
    message = ModelInferRequest(model_name="m")
    use_raw = draw(st.booleans())
    for index in range(draw(st.integers(0, 3))):
        tensor = message.inputs.add(
            name=draw(st.sampled_from(["x", "y", "", f"t{index}"])),
            datatype=draw(DATATYPES),
            shape=draw(st.lists(DIMS, max_size=draw(st.sampled_from([4, 40])))))
        if use_raw or draw(st.booleans()):
            message.raw_input_contents.append(draw(st.binary(max_size=64)))
        if not use_raw:
            field = draw(st.sampled_from(sorted(TYPED_FIELDS)))
            getattr(tensor.contents, field).extend(
                draw(st.lists(TYPED_FIELDS[field], max_size=12)))
    return message


@PROPERTIES
@given(odd_requests())
def test_any_request_decodes_consistently_or_is_invalid_input(message) -> None:
    """Whatever a request holds, decoding gives arrays that match their declared datatype
    and shape, or InvalidInput that names the problem; never another exception."""
    try:
        decoded = codec.decode_infer_request(message, max_request_bytes=4096,
                                             max_elements=1024)
    except InvalidInput as exc:
        assert exc.message
        return
    for tensor in message.inputs:
        array = decoded.inputs[tensor.name]
        assert array.dtype == V2_TO_NUMPY[tensor.datatype]
        assert array.shape == tuple(tensor.shape)
        assert not array.flags.writeable
    assert len(decoded.inputs) == len(message.inputs)


@PROPERTIES
@given(st.binary(max_size=256))
def test_bytes_that_parse_as_a_request_decode_or_are_invalid_input(data: bytes) -> None:
    """Random bytes either do not parse as a ModelInferRequest or decode as above."""
    try:
        message = ModelInferRequest.FromString(data)
    except DecodeError:  # the server refuses these before the codec sees them
        return
    try:
        codec.decode_infer_request(message, max_request_bytes=4096, max_elements=1024)
    except InvalidInput:
        pass


@PROPERTIES
@given(st.sampled_from(NUMERIC), st.lists(st.integers(0, 64), min_size=1, max_size=3),
       st.integers(1, 4096))
def test_tensor_bytes_never_pass_the_limit(datatype: str, shape: list[int],
                                           limit: int) -> None:
    """A request whose tensors hold more bytes than the limit is refused, naming the limit;
    one within it decodes."""
    array = np.zeros(shape, dtype=V2_TO_NUMPY[datatype])
    message = codec.encode_infer_request(InferRequest(model_name="m", inputs={"x": array}))
    try:
        codec.decode_infer_request(message, max_request_bytes=limit)
    except InvalidInput as exc:
        assert array.nbytes > limit
        assert str(limit) in exc.message
    else:
        assert array.nbytes <= limit
