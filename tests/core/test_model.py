"""Tests for the ONNX Runtime model wrapper (core.model)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import structlog
from onnx import TensorProto, helper

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput, ModelFailure
from edgecloud.core.model import OnnxModel, batch_size
from edgecloud.core.tensors import InferRequest, TensorSpec


def _model_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any supported ONNX Runtime
    return model.SerializeToString()


def _tensor(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _add_model() -> bytes:
    """y = x + bias and the ids passed through; x is [batch, 3] FP32, ids [batch] INT64."""
    return _model_bytes(
        [
            helper.make_node("Add", ["x", "bias"], ["y"]),
            helper.make_node("Identity", ["ids"], ["z"]),
        ],
        [
            _tensor("x", TensorProto.FLOAT, ["batch", 3]),
            _tensor("bias", TensorProto.FLOAT, [3]),
            _tensor("ids", TensorProto.INT64, [None]),
        ],
        [_tensor("y", TensorProto.FLOAT, ["batch", 3]), _tensor("z", TensorProto.INT64, [None])],
    )


def _string_model() -> bytes:
    return _model_bytes(
        [helper.make_node("Identity", ["text"], ["echo"])],
        [_tensor("text", TensorProto.STRING, [None])],
        [_tensor("echo", TensorProto.STRING, [None])],
    )


def _reshape_model() -> bytes:
    """Reshapes to [2, -1]: fails inside ONNX Runtime for an odd number of elements."""
    target = helper.make_tensor("target", TensorProto.INT64, [2], [2, -1])
    return _model_bytes(
        [helper.make_node("Reshape", ["v", "target"], ["r"])],
        [_tensor("v", TensorProto.FLOAT, [None])],
        [_tensor("r", TensorProto.FLOAT, [2, None])],
        [target],
    )


def _sequence_output_model() -> bytes:
    return _model_bytes(
        [
            helper.make_node("Identity", ["x"], ["y"]),
            helper.make_node("SequenceConstruct", ["x"], ["seq"]),
        ],
        [_tensor("x", TensorProto.FLOAT, [2])],
        [
            _tensor("y", TensorProto.FLOAT, [2]),
            helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2]),
        ],
    )


@pytest.fixture(scope="module")
def add_model(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    path = tmp_path_factory.mktemp("models") / "add.onnx"
    path.write_bytes(_add_model())
    return OnnxModel.load(path, name="adder", version="4")


def _feed(rows: int = 2) -> dict[str, np.ndarray]:
    return {
        "x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3),
        "bias": np.array([0.5, -1.0, 2.0], dtype=np.float32),
        "ids": np.arange(rows, dtype=np.int64) * 10,
    }


# --------------------------------------------------------------------------- loading


def test_load_reads_the_v2_signature(add_model: OnnxModel, tmp_path: Path) -> None:
    """Symbolic and None dimensions become -1 and ORT types become v2 datatype names."""
    assert add_model.inputs == (
        TensorSpec("x", "FP32", (-1, 3)),
        TensorSpec("bias", "FP32", (3,)),
        TensorSpec("ids", "INT64", (-1,)),
    )
    assert add_model.outputs == (TensorSpec("y", "FP32", (-1, 3)), TensorSpec("z", "INT64", (-1,)))
    assert (add_model.name, add_model.version, add_model.platform) == (
        "adder",
        "4",
        "onnxruntime_onnx",
    )
    assert add_model.path is not None and add_model.path.name == "add.onnx"


def test_sessions_spin_unless_asked_not_to(tmp_path: Path) -> None:
    """Idle intra-op threads spin by default (ONNX Runtime's choice); spinning=False makes
    them sleep, and the model still answers the same; the thread count is kept."""
    path = tmp_path / "add.onnx"
    path.write_bytes(_add_model())
    spinning = OnnxModel.load(path, name="adder", intra_op_threads=2)
    sleeping = OnnxModel.load(path, name="adder", intra_op_threads=2, spinning=False)
    assert (spinning.spinning, sleeping.spinning) == (True, False)
    assert sleeping.intra_op_threads == spinning.intra_op_threads == 2
    assert not OnnxModel.from_bytes(_add_model(), name="adder", spinning=False).spinning
    np.testing.assert_array_equal(sleeping.run(_feed())["y"], spinning.run(_feed())["y"])


def test_from_bytes_has_no_path_and_maps_strings_to_bytes() -> None:
    """A model from memory has path None; tensor(string) is the v2 BYTES datatype."""
    model = OnnxModel.from_bytes(_string_model(), name="echo")
    assert model.path is None
    assert model.version == "1"
    assert model.inputs == (TensorSpec("text", "BYTES", (-1,)),)


def test_outputs_v2_cannot_carry_are_left_out() -> None:
    """A sequence output is dropped from the signature (with a log event), tensors stay."""
    with structlog.testing.capture_logs() as logs:
        model = OnnxModel.from_bytes(_sequence_output_model(), name="seq")
    assert [spec.name for spec in model.outputs] == ["y"]
    assert list(model.run({"x": np.ones(2, np.float32)})) == ["y"]
    assert any(entry["event"] == "model_output_skipped" for entry in logs)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"certainly not an onnx model", "not an ONNX model"),
        (
            _model_bytes(
                [helper.make_node("Add", ["x", "ghost"], ["y"])],
                [_tensor("x", TensorProto.FLOAT, [1])],
                [_tensor("y", TensorProto.FLOAT, [1])],
            ),
            "cannot load",
        ),
        (b"", "cannot load"),
    ],
    ids=["garbage", "dangling-input", "empty"],
)
def test_loading_a_bad_file_is_invalid_input_naming_it(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """A file ONNX Runtime cannot open raises InvalidInput naming the file, not ORT's text."""
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=reason) as info:
        OnnxModel.load(path, name="broken")
    assert str(path) in info.value.message
    assert "ONNXRuntimeError" not in info.value.message


def test_loading_a_missing_file_is_invalid_input(tmp_path: Path) -> None:
    """A path that does not exist raises InvalidInput saying so, with the path."""
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(InvalidInput, match="does not exist") as info:
        OnnxModel.load(path, name="m")
    assert str(path) in info.value.message


def test_loading_a_directory_is_invalid_input(tmp_path: Path) -> None:
    """A directory is not a model file."""
    with pytest.raises(InvalidInput, match="not a file"):
        OnnxModel.load(tmp_path, name="m")


def test_from_bytes_garbage_is_invalid_input() -> None:
    """Bytes that are not a model raise InvalidInput."""
    with pytest.raises(InvalidInput, match="not an ONNX model"):
        OnnxModel.from_bytes(b"\x00\x01garbage", name="m")


def test_unknown_provider_is_a_value_error() -> None:
    """Asking for an execution provider ONNX Runtime does not know (a typo) is a
    configuration error."""
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        OnnxModel.from_bytes(_string_model(), name="m", providers=["NoSuchExecutionProvider"])


def test_unavailable_providers_fall_back_to_cpu_with_one_warning() -> None:
    """Asking for CUDA and TensorRT on a machine without them runs on CPU: one warning names
    what was skipped, and the model reports and logs the provider it got."""
    import onnxruntime as ort
    from structlog.testing import capture_logs

    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    if set(wanted) & set(ort.get_available_providers()):
        pytest.skip("this machine has a GPU provider")
    with capture_logs() as logs:
        model = OnnxModel.from_bytes(_add_model(), name="m", providers=wanted)
    warnings = [e for e in logs if e["event"] == "execution_providers_unavailable"]
    assert len(warnings) == 1 and warnings[0]["skipped"] == wanted
    assert model.providers == ("CPUExecutionProvider",)
    (used,) = [e for e in logs if e["event"] == "model_providers"]
    assert used["execution_provider"] == "CPUExecutionProvider"
    x = np.ones((2, 3), np.float32)
    out = model.run({"x": x, "bias": np.ones(3, np.float32), "ids": np.arange(2)})
    np.testing.assert_array_equal(out["y"], x + 1)


def test_available_providers_keep_their_order_silently() -> None:
    """Providers the machine has are used in the order given, with no warning."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        model = OnnxModel.from_bytes(_add_model(), name="m",
                                     providers=["CPUExecutionProvider"])
    assert model.providers == ("CPUExecutionProvider",)
    assert not [e for e in logs if e["event"] == "execution_providers_unavailable"]


# --------------------------------------------------------------------------- validation


def test_validate_inputs_orders_like_the_signature(add_model: OnnxModel) -> None:
    """Inputs given in any order come back in the model's input order, unchanged."""
    feed = _feed()
    shuffled = {name: feed[name] for name in reversed(list(feed))}
    validated = add_model.validate_inputs(shuffled)
    assert list(validated) == ["x", "bias", "ids"]
    assert all(validated[name] is feed[name] for name in feed)


def _without(name: str) -> dict[str, np.ndarray]:
    feed = _feed()
    del feed[name]
    return feed


def _with(name: str, value: object) -> dict[str, np.ndarray]:
    return {**_feed(), name: value}


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({**_without("x"), "X": _feed()["x"]}, ["no input 'X'", "'x', 'bias', 'ids'"]),
        (_without("ids"), ["input 'ids' is missing", "3 inputs", "got 2"]),
        (_with("extra", np.zeros(1)), ["no input 'extra'"]),
        (_with("x", np.zeros((2, 3), np.float64)), ["input 'x'", "FP32", "got FP64"]),
        (_with("ids", np.zeros(2, np.int32)), ["input 'ids'", "INT64", "got INT32"]),
        (_with("x", np.zeros((2, 3), np.complex64)), ["input 'x'", "got complex64"]),
        (_with("x", np.zeros(6, np.float32)), ["input 'x'", "2 dimensions [-1, 3]", "got 1 [6]"]),
        (_with("x", np.zeros((2, 4), np.float32)), ["input 'x'", "dimension 1 must be 3", "got 4"]),
        (_with("bias", np.zeros(2, np.float32)), ["input 'bias'", "dimension 0 must be 3"]),
        (_with("bias", [0.5, -1.0, 2.0]), ["input 'bias'", "numpy array", "list"]),
    ],
    ids=[
        "wrong-name",
        "missing",
        "extra",
        "dtype",
        "int-width",
        "no-v2-dtype",
        "rank",
        "fixed-dim",
        "fixed-dim-unbatched",
        "not-an-array",
    ],
)
def test_validate_inputs_errors_name_the_input(
    add_model: OnnxModel, inputs: dict, fragments: list[str]
) -> None:
    """A signature mismatch raises InvalidInput naming the input, what was expected and got."""
    with pytest.raises(InvalidInput) as info:
        add_model.validate_inputs(inputs)
    for fragment in fragments:
        assert fragment in info.value.message


def test_validate_inputs_accepts_any_batch_size(add_model: OnnxModel) -> None:
    """The free batch dimension takes any size, zero included."""
    for rows in (0, 1, 7):
        assert add_model.validate_inputs(_feed(rows))["x"].shape == (rows, 3)


def test_validate_inputs_converts_byte_order(add_model: OnnxModel) -> None:
    """A big-endian FP32 array is FP32; it comes back in native order with the same values."""
    validated = add_model.validate_inputs(_with("x", _feed()["x"].astype(">f4")))
    assert validated["x"].dtype == np.dtype(np.float32)
    np.testing.assert_array_equal(validated["x"], _feed()["x"])


# --------------------------------------------------------------------------- running


def test_run_matches_numpy(add_model: OnnxModel) -> None:
    """run returns every output by name, equal to the numpy computation."""
    feed = _feed(4)
    result = add_model.run(feed)
    assert list(result) == ["y", "z"]
    np.testing.assert_array_equal(result["y"], feed["x"] + feed["bias"])
    np.testing.assert_array_equal(result["z"], feed["ids"])
    assert result["y"].dtype == np.float32


def test_run_picks_requested_outputs(add_model: OnnxModel) -> None:
    """output_names selects and orders the outputs returned."""
    assert list(add_model.run(_feed(), ["z"])) == ["z"]
    assert list(add_model.run(_feed(), ["z", "y"])) == ["z", "y"]


@pytest.mark.parametrize(
    ("names", "fragment"),
    [(["probs"], "no output 'probs'"), (["y", "y"], "output 'y' is requested more than once")],
)
def test_run_refuses_bad_output_names(
    add_model: OnnxModel, names: list[str], fragment: str
) -> None:
    """An unknown or repeated output name is InvalidInput naming it."""
    with pytest.raises(InvalidInput, match=fragment):
        add_model.run(_feed(), names)


def test_run_validates_first(add_model: OnnxModel) -> None:
    """run refuses a bad input with InvalidInput before ONNX Runtime sees it."""
    with pytest.raises(InvalidInput, match="input 'x'"):
        add_model.run(_with("x", np.zeros((2, 4), np.float32)))


def test_run_takes_decoded_read_only_arrays(add_model: OnnxModel) -> None:
    """Arrays straight from the codec (read-only views of the message) run as they are."""
    pb = codec.encode_infer_request(InferRequest(model_name="adder", inputs=_feed()))
    decoded = codec.decode_infer_request(pb)
    assert not decoded.inputs["x"].flags.writeable
    result = add_model.run(decoded.inputs)
    np.testing.assert_array_equal(result["y"], _feed()["x"] + _feed()["bias"])


def test_string_model_takes_and_returns_bytes() -> None:
    """BYTES inputs go in as bytes (or str) and string outputs come back as bytes."""
    model = OnnxModel.from_bytes(_string_model(), name="echo")
    text = np.array([b"caf\xc3\xa9", b"", "plain"], dtype=object)
    echoed = model.run({"text": text})["echo"]
    assert echoed.dtype == object
    assert echoed.tolist() == [b"caf\xc3\xa9", b"", b"plain"]


def test_string_input_must_be_utf8() -> None:
    """ONNX Runtime strings are text: a non-UTF-8 element is InvalidInput naming the input."""
    model = OnnxModel.from_bytes(_string_model(), name="echo")
    with pytest.raises(InvalidInput, match="input 'text' element 1 is not UTF-8"):
        model.run({"text": np.array([b"ok", b"\xff"], dtype=object)})


def test_runtime_failure_is_model_failure_and_logged() -> None:
    """An ORT error while running is ModelFailure with a generic message; details are logged."""
    model = OnnxModel.from_bytes(_reshape_model(), name="shaper", version="2")
    with structlog.testing.capture_logs() as logs, pytest.raises(ModelFailure) as info:
        model.run({"v": np.ones(3, np.float32)})
    assert info.value.message == "model 'shaper' version 2 failed to run"
    failures = [entry for entry in logs if entry["event"] == "model_run_failed"]
    assert len(failures) == 1
    assert failures[0]["model"] == "shaper"
    assert failures[0]["error"]
    np.testing.assert_array_equal(model.run({"v": np.ones(4, np.float32)})["r"], np.ones((2, 2)))


async def test_run_async_uses_the_executor(add_model: OnnxModel) -> None:
    """run_async runs the model in the given executor and returns the same result as run."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ort-test") as executor:
        results = await asyncio.gather(
            *(add_model.run_async(_feed(rows), executor=executor) for rows in (1, 2, 3))
        )
        picked = await add_model.run_async(_feed(), ["z"], executor=executor)
    assert [result["y"].shape for result in results] == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_array_equal(picked["z"], _feed()["ids"])


async def test_run_async_raises_domain_errors(add_model: OnnxModel) -> None:
    """Errors from the worker thread reach the awaiting caller unchanged."""
    with pytest.raises(InvalidInput, match="input 'ids' is missing"):
        await add_model.run_async(_without("ids"))


# --------------------------------------------------------------------------- batch size


def test_batch_size_is_rows_of_the_first_input() -> None:
    """batch_size reads the first dimension of the first input."""
    assert batch_size({"a": np.zeros((5, 3)), "b": np.zeros((2,))}) == 5
    assert batch_size({"a": np.zeros((0, 3))}) == 0


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [({}, "no inputs"), ({"s": np.float32(1.0)}, "input 's' is a scalar")],
)
def test_batch_size_without_a_batch_is_invalid(inputs: dict, fragment: str) -> None:
    """No inputs, or a scalar first input, has no batch size."""
    with pytest.raises(InvalidInput, match=fragment):
        batch_size(inputs)


# ------------------------------------------------------------- scikit-learn exports


def test_default_sklearn_export_serves_its_probabilities(tmp_path: Path) -> None:
    """A skl2onnx default export (ZipMap on) serves its class probabilities as a float
    [N, classes] tensor under the map output's name, equal to the zipmap-off export's."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export, iris

    with structlog.testing.capture_logs() as logs:
        zipped = OnnxModel.load(export("logistic", tmp_path / "on.onnx"), name="iris")
    plain = OnnxModel.load(export("logistic", tmp_path / "off.onnx", zipmap=False),
                           name="iris")
    assert zipped.outputs == (TensorSpec("output_label", "INT64", (-1,)),
                              TensorSpec("output_probability", "FP32", (-1, 3)))
    assert zipped.skipped_outputs == ()
    assert any(entry["event"] == "model_zipmap_unwrapped" for entry in logs)
    x, _ = iris()
    got = zipped.run({"X": x[:7]})
    want = plain.run({"X": x[:7]})
    np.testing.assert_allclose(got["output_probability"], want["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(got["output_label"], want["label"])


def test_fixed_batch_size_is_read_from_the_input(tmp_path: Path) -> None:
    """An export with batch dimension 1 reports 1 row per run; a free batch reports None."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export

    one = OnnxModel.load(export("logistic", tmp_path / "one.onnx", batch=1), name="one")
    assert one.fixed_batch_size == 1
    free = OnnxModel.load(export("logistic", tmp_path / "free.onnx"), name="free")
    assert free.fixed_batch_size is None
