"""Making models cheaper to run on the edge: int8 quantization, checked and measured.

::

    calibration = read_rows(Path("calibration.npz"), "calibration")
    report = quantize_model(Path("edge.onnx"), Path("edge-int8.onnx"), calibration=calibration,
                            method="static", per_channel=False)

Modules: :mod:`~edgecloud.optimize.quantize` (the quantization and its report),
:mod:`~edgecloud.optimize.graph` (ONNX graph rewriting and inspection),
:mod:`~edgecloud.optimize.measure` (latency and agreement of two variants) and
:mod:`~edgecloud.optimize.rows` (the rows they run on). Errors are
:class:`edgecloud.core.errors.EdgecloudError`.
"""

from edgecloud.optimize.measure import REPEATS, WARMUP
from edgecloud.optimize.quantize import METHODS, ModelFigures, QuantizeReport, quantize_model
from edgecloud.optimize.rows import Rows, read_rows

__all__ = [
    "METHODS",
    "REPEATS",
    "WARMUP",
    "ModelFigures",
    "QuantizeReport",
    "Rows",
    "quantize_model",
    "read_rows",
]
