"""``edgecloud models quantize``: the comparison table, refusals and clean errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.model import OnnxModel
from edgecloud.quantize_cli import main


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
