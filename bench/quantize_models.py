"""int8 quantization of small edge models: what it saves and what it costs.

Runs ``edgecloud.optimize.quantize_model`` on the bundled digits models and on a small
scikit-learn MLP (64 -> 64 -> 10, trained on the calibration split; needs the ``examples``
extra), with dynamic, static and static per-channel quantization, calibrating on the
calibration split and comparing on the test split. Prints one summary table: size, median
latency (1 row and 256 rows), test accuracy, top-1 agreement and the largest output
difference for each variant. The cloud SVM keeps its weights in ``ai.onnx.ml`` attributes
and is reported as having nothing to quantize.

    python bench/quantize_models.py [--repeats 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
from rich.console import Console
from rich.table import Table

from edgecloud.core.errors import EdgecloudError
from edgecloud.examples.digits import write_example
from edgecloud.optimize import QuantizeReport, quantize_model, read_rows

VARIANTS = (("dynamic", False), ("static", False), ("static", True))


def build_mlp(data: Path, out: Path) -> Path | None:
    """Train and convert the MLP; None when scikit-learn or skl2onnx is missing."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    with np.load(data / "calibration.npz") as split:
        X, y = split["X"], split["y"]
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
    out.write_bytes(model.SerializeToString())
    return out


def rows(name: str, report: QuantizeReport, first: bool) -> list[list[str]]:
    """The quantized variant's row, preceded by the original's on the model's first run."""
    out = []
    if first:
        o = report.original
        out.append([name, "float32", str(o.size_bytes), f"{o.latency_us[1]:.1f}",
                    f"{o.latency_us[256]:.1f}", f"{o.accuracy:.2%}", "", ""])
    q = report.quantized
    variant = report.method + (" per-ch." if report.per_channel else "")
    out.append(["", variant, str(q.size_bytes), f"{q.latency_us[1]:.1f}",
                f"{q.latency_us[256]:.1f}", f"{q.accuracy:.2%}", f"{report.agreement:.2%}",
                f"{report.max_abs_diff:.3g}"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per model")
    args = parser.parse_args()
    onnxruntime.set_default_logger_severity(3)
    console = Console()

    table = Table(
        title="int8 variants, compared on the digits test split",
        caption="latency: median µs per call, 1 thread; the float32 row is from the run "
        "beside the first variant (each run times the original again)",
    )
    for column in ("model", "variant", "bytes", "1 row", "256 rows", "accuracy",
                   "agreement", "max |diff|"):
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    with tempfile.TemporaryDirectory(prefix="edgecloud-bench-quantize-") as tmp:
        work = Path(tmp)
        data = work / "digits"
        write_example(data)
        models = {"edge": data / "edge.onnx", "cloud": data / "cloud.onnx"}
        mlp = build_mlp(data, work / "mlp.onnx")
        if mlp is None:
            console.print("scikit-learn/skl2onnx missing: the MLP is skipped")
        else:
            models["mlp"] = mlp
        notes: dict[str, tuple[str, ...]] = {}
        calibration = read_rows(data / "calibration.npz", "calibration")
        evaluation = read_rows(data / "test.npz", "evaluation")
        for name, path in models.items():
            for k, (method, per_channel) in enumerate(VARIANTS):
                out = work / f"{name}-{method}-{int(per_channel)}.onnx"
                try:
                    report = quantize_model(
                        path, out, calibration=calibration, method=method,
                        per_channel=per_channel, evaluation=evaluation,
                        repeats=args.repeats,
                    )
                except EdgecloudError as exc:
                    console.print(f"{name} ({method}): {exc.message}", highlight=False)
                    break
                for cells in rows(name, report, first=k == 0):
                    table.add_row(*cells)
                notes[name] = report.notes
    console.print(table)
    for name, lines in notes.items():
        for line in lines:
            console.print(f"{name}: {line}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
