"""The int8 quantizer: smaller models with the same signature, LinearClassifier rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.model import OnnxModel
from edgecloud.optimize import QuantizeReport, quantize_model, read_rows


def _accuracy(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    model = OnnxModel.load(path, name=path.stem)
    probabilities = model.run({"pixels": X})["probabilities"]
    return float(np.mean(probabilities.argmax(axis=1) == y))


def _signature(path: Path) -> tuple:
    model = OnnxModel.load(path, name="any")
    return model.inputs, model.outputs


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_mlp_quantizes_smaller_with_same_signature_and_accuracy(
    method, mlp, digits_dir, digits_test, tmp_path
):
    """Both methods shrink the MLP, keep its signature and stay within 3 points of accuracy."""
    out = tmp_path / f"mlp-{method}.onnx"
    report = quantize_model(
        mlp, out, calibration=read_rows(digits_dir / "calibration.npz", "calibration"),
        method=method, per_channel=False,
        evaluation=read_rows(digits_dir / "test.npz", "evaluation"),
    )

    assert isinstance(report, QuantizeReport)
    assert out.stat().st_size < mlp.stat().st_size
    assert report.quantized.size_bytes == out.stat().st_size
    assert report.original.size_bytes == mlp.stat().st_size
    assert _signature(out) == _signature(mlp)
    X, y = digits_test
    original_accuracy, quantized_accuracy = _accuracy(mlp, X, y), _accuracy(out, X, y)
    assert quantized_accuracy >= original_accuracy - 0.03
    assert report.original.accuracy == pytest.approx(original_accuracy)
    assert report.quantized.accuracy == pytest.approx(quantized_accuracy)
    assert report.method == method and report.eval_rows == len(y)
    assert set(report.original.latency_us) == set(report.quantized.latency_us) == {1, 256}
    assert all(v > 0 for v in [*report.original.latency_us.values(),
                               *report.quantized.latency_us.values()])
    assert report.agreement is not None and report.agreement >= 0.95
    assert report.max_abs_diff is not None and report.max_abs_diff < 0.5
    assert report.quantized_tensors == 2 and report.quantized_values >= 64 * 64
    assert report.notes == ()
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temporary file left behind


def test_bundled_edge_linear_classifier_is_rewritten_then_quantized(
    digits_dir, digits_test, tmp_path
):
    """The edge model's LinearClassifier becomes MatMul + Add + Softmax and is quantized."""
    edge = digits_dir / "edge.onnx"
    out = tmp_path / "edge-int8.onnx"
    report = quantize_model(edge, out, calibration=None, method="dynamic", per_channel=False,
                            evaluation=read_rows(digits_dir / "test.npz", "evaluation"))

    assert any("LinearClassifier" in note and "MatMul" in note for note in report.notes)
    assert report.quantized_tensors == 1 and report.quantized_values == 640
    assert out.stat().st_size < edge.stat().st_size
    assert _signature(out) == _signature(edge)
    X, y = digits_test
    assert _accuracy(out, X, y) >= _accuracy(edge, X, y) - 0.03
    assert report.agreement is not None and report.agreement >= 0.97


def test_logistic_regression_label_output_survives_the_rewrite(
    digits_dir, digits_test, tmp_path
):
    """A LinearClassifier whose label is an output gets ArgMax + Gather and keeps its labels."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    with np.load(digits_dir / "calibration.npz") as data:
        classifier = LogisticRegression(max_iter=2000).fit(data["X"], data["y"])
    model = convert_sklearn(
        classifier,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    source = tmp_path / "logreg.onnx"
    source.write_bytes(model.SerializeToString())
    out = tmp_path / "logreg-int8.onnx"
    report = quantize_model(source, out,
                            calibration=read_rows(digits_dir / "calibration.npz", "calibration"),
                            method="static", per_channel=True,
                            evaluation=read_rows(digits_dir / "test.npz", "evaluation"))

    assert any(note.startswith("rewrote LinearClassifier") for note in report.notes)
    assert [spec.name for spec in OnnxModel.load(out, name="q").outputs] == [
        "label", "probabilities"]
    assert _signature(out) == _signature(source)
    X, y = digits_test
    labels = OnnxModel.load(out, name="q").run({"pixels": X})["label"]
    assert float(np.mean(labels == y)) == pytest.approx(report.quantized.accuracy)
    assert report.quantized.accuracy >= report.original.accuracy - 0.03
