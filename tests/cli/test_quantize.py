"""``edgecloud models quantize``: real int8 variants, checked signatures, clean errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.model import OnnxModel
from edgecloud.quantize import QuantizeReport, main, quantize_model


def _accuracy(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    model = OnnxModel.load(path, name=path.stem)
    probabilities = model.run({"pixels": X})["probabilities"]
    return float(np.mean(probabilities.argmax(axis=1) == y))


def _signature(path: Path) -> tuple:
    model = OnnxModel.load(path, name="any")
    return model.inputs, model.outputs


@pytest.fixture(scope="module")
def mlp(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scikit-learn MLP (MatMul-based once converted) trained on the calibration split."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    with np.load(digits_dir / "calibration.npz") as data:
        X, y = data["X"], data["y"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
        classifier.fit(X, y)
        model = convert_sklearn(
            classifier,
            initial_types=[("pixels", FloatTensorType([None, 64]))],
            options={id(classifier): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_mlp_quantizes_smaller_with_same_signature_and_accuracy(
    method, mlp, digits_dir, digits_test, tmp_path
):
    """Both methods shrink the MLP, keep its signature and stay within 3 points of accuracy."""
    out = tmp_path / f"mlp-{method}.onnx"
    report = quantize_model(
        mlp, out, calibration=digits_dir / "calibration.npz", method=method,
        per_channel=False, evaluation=digits_dir / "test.npz",
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


def test_command_prints_the_comparison_table(mlp, digits_dir, tmp_path, capsys):
    """The command prints size, latency, accuracy and agreement and exits 0."""
    out = tmp_path / "mlp-int8.onnx"
    code = main(["models", "quantize", str(mlp), "--out", str(out),
                 "--calibration", str(digits_dir / "calibration.npz"), "--per-channel"])

    printed = capsys.readouterr().out
    assert code == 0
    for fragment in ("static int8, per-channel", "size (bytes)", "1 row", "256 rows",
                     "accuracy", "top-1 agreement", "max |difference|"):
        assert fragment in printed
    assert OnnxModel.load(out, name="q").outputs == OnnxModel.load(mlp, name="o").outputs


def test_without_data_dynamic_runs_on_random_rows(mlp, tmp_path, capsys):
    """Without --calibration the method is dynamic and the models are compared on random rows."""
    out = tmp_path / "mlp-dynamic.onnx"
    code = main(["models", "quantize", str(mlp), "--out", str(out)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "dynamic int8" in printed and "random" in printed
    assert "top-1 agreement" in printed
    assert not any(line.lstrip("│┃ ").startswith("accuracy") for line in printed.splitlines())
    assert out.stat().st_size < mlp.stat().st_size


def test_bundled_edge_linear_classifier_is_rewritten_then_quantized(
    digits_dir, digits_test, tmp_path
):
    """The edge model's LinearClassifier becomes MatMul + Add + Softmax and is quantized."""
    edge = digits_dir / "edge.onnx"
    out = tmp_path / "edge-int8.onnx"
    report = quantize_model(edge, out, calibration=None, method="dynamic", per_channel=False,
                            evaluation=digits_dir / "test.npz")

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
    report = quantize_model(source, out, calibration=digits_dir / "calibration.npz",
                            method="static", per_channel=True,
                            evaluation=digits_dir / "test.npz")

    assert any(note.startswith("rewrote LinearClassifier") for note in report.notes)
    assert [spec.name for spec in OnnxModel.load(out, name="q").outputs] == [
        "label", "probabilities"]
    assert _signature(out) == _signature(source)
    X, y = digits_test
    labels = OnnxModel.load(out, name="q").run({"pixels": X})["label"]
    assert float(np.mean(labels == y)) == pytest.approx(report.quantized.accuracy)
    assert report.quantized.accuracy >= report.original.accuracy - 0.03


def test_bundled_cloud_svm_has_nothing_to_quantize(digits_dir, tmp_path, capsys):
    """The SVM keeps its weights in ai.onnx.ml attributes: a clear refusal, the old file kept."""
    out = tmp_path / "cloud-int8.onnx"
    out.write_bytes(b"previous")
    code = main(["models", "quantize", str(digits_dir / "cloud.onnx"), "--out", str(out),
                 "--calibration", str(digits_dir / "calibration.npz")])

    err = capsys.readouterr().err
    assert code == 2
    assert "nothing to quantize" in err and "SVMClassifier" in err
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == [out.name]


@pytest.fixture
def bad_data(tmp_path: Path, digits_test) -> dict[str, Path]:
    """Data and model files that are wrong in one way each."""
    X, y = digits_test
    files = {
        "no_x": ("no_x.npz", {"y": y}),
        "narrow": ("narrow.npz", {"X": X[:, :10]}),
        "float64": ("float64.npz", {"X": X.astype(np.float64)}),
        "short_y": ("short_y.npz", {"X": X, "y": y[:-1]}),
        "no_rows": ("no_rows.npz", {"X": X[:0]}),
    }
    paths = {}
    for key, (name, arrays) in files.items():
        paths[key] = tmp_path / name
        np.savez(paths[key], **arrays)
    paths["garbage"] = tmp_path / "garbage.onnx"
    paths["garbage"].write_bytes(os.urandom(256))
    paths["text"] = tmp_path / "text.npz"
    paths["text"].write_text("not an archive")
    paths["npy"] = tmp_path / "plain.npy"
    np.save(paths["npy"], X)
    return paths


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["{missing}", "--out", "{out}"], "does not exist"),
        (["{garbage}", "--out", "{out}"], "not an ONNX model"),
        (["{edge}", "--out", "{out}", "--method", "static"], "needs --calibration"),
        (["{edge}", "--out", "{tmp}/nowhere/q.onnx"], "does not exist"),
        (["{edge}", "--out", "{tmp}"], "is a directory"),
        (["{edge}", "--out", "{out}", "--calibration", "{missing}"], "does not exist"),
        (["{edge}", "--out", "{out}", "--calibration", "{no_x}"], "has no array X"),
        (["{edge}", "--out", "{out}", "--calibration", "{narrow}"], "dimension 1 must be 64"),
        (["{edge}", "--out", "{out}", "--calibration", "{float64}"], "expects datatype FP32"),
        (["{edge}", "--out", "{out}", "--calibration", "{short_y}"], "one per row of X"),
        (["{edge}", "--out", "{out}", "--calibration", "{no_rows}"], "has no rows"),
        (["{edge}", "--out", "{out}", "--calibration", "{text}"], "not an .npz archive"),
        (["{edge}", "--out", "{out}", "--calibration", "{npy}"], "not an .npz archive"),
        (["{edge}", "--out", "{out}", "--eval", "{narrow}"], "does not fit the model"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, fragment, bad_data, digits_dir, tmp_path,
                                          capsys):
    """Each mistake gets one message naming the problem, exit code 2, no traceback, no file."""
    names = {**bad_data, "edge": digits_dir / "edge.onnx", "missing": tmp_path / "missing",
             "out": tmp_path / "out.onnx", "tmp": tmp_path}
    code = main(["models", "quantize", *(a.format(**names) for a in args)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("edgecloud: error: ") and fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_quantizer_failure_is_a_clean_error(mlp, tmp_path, capsys, monkeypatch):
    """An exception inside ONNX Runtime's quantizer becomes exit code 2 with its first line."""
    from onnxruntime import quantization

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported graph\nlong details")

    monkeypatch.setattr(quantization, "quantize_dynamic", broken)
    out = tmp_path / "q.onnx"
    code = main(["models", "quantize", str(mlp), "--out", str(out)])

    err = capsys.readouterr().err
    assert code == 2
    assert "could not quantize" in err and "unsupported graph" in err
    assert "long details" not in err
    assert not out.exists()
