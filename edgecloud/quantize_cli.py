"""``edgecloud models quantize``: an int8 variant of an ONNX model, measured beside the original.

::

    edgecloud models quantize model.onnx --out model-int8.onnx \\
        [--calibration DATA.npz] [--eval DATA.npz] [--method static|dynamic] [--per-channel]

The method is ``static`` when ``--calibration`` is given, else ``dynamic``.
This module checks the flags, reads the ``.npz`` rows, calls
:func:`edgecloud.optimize.quantize_model` (which does the work; see there) and
prints its report as a table. Bad flags raise
:class:`~edgecloud.common_cli.CliError` and the library's errors are
:class:`~edgecloud.core.errors.EdgecloudError`; :func:`edgecloud.common_cli.run`
prints either as one message with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.common_cli import CliError, run
from edgecloud.optimize import METHODS, WARMUP, QuantizeReport, quantize_model, read_rows

if TYPE_CHECKING:
    from rich.table import Table


def render_report(report: QuantizeReport) -> Table:
    """The report as a rich table: original, quantized and the change, one figure per row."""
    from rich.table import Table

    per_channel = ", per-channel" if report.per_channel else ""
    table = Table(
        title=f"{report.source.name} -> {report.output.name} ({report.method} int8{per_channel})",
        caption=(
            f"compared on {report.eval_rows} rows ({report.eval_data}); latency: median of "
            f"{report.repeats} calls per model, alternating, 1 thread, after {WARMUP} warmup "
            f"calls; weights stored as integers: {report.quantized_tensors} "
            f"{'tensor' if report.quantized_tensors == 1 else 'tensors'}, "
            f"{report.quantized_values} values"
        ),
    )
    table.add_column("figure", justify="left")
    for column in ("original", "quantized", "change"):
        table.add_column(column, justify="right")
    o, q = report.original, report.quantized
    table.add_row("size (bytes)", str(o.size_bytes), str(q.size_bytes),
                  f"×{q.size_bytes / o.size_bytes:.2f}")
    for rows, before in o.latency_us.items():
        after = q.latency_us[rows]
        what = "1 row" if rows == 1 else f"{rows} rows"
        table.add_row(f"latency, {what} (median µs)", f"{before:.1f}", f"{after:.1f}",
                      f"×{after / before:.2f}")
    if o.accuracy is not None and q.accuracy is not None:
        table.add_row("accuracy", f"{o.accuracy:.2%}", f"{q.accuracy:.2%}",
                      f"{100 * (q.accuracy - o.accuracy):+.2f} pts")
    if report.agreement is not None:
        table.add_row("top-1 agreement with original", "", f"{report.agreement:.2%}", "")
    if report.max_abs_diff is not None:
        table.add_row("max |difference| of float outputs", "", f"{report.max_abs_diff:.3g}", "")
    return table


def _check_out(out: Path, model: Path) -> None:
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise CliError(f"--out: folder {out.parent} does not exist")
    if out.exists() and out.resolve() == model.resolve():
        raise CliError("--out must not be the model being quantized")


def _cmd_quantize(args: argparse.Namespace) -> int:
    import onnxruntime
    from rich.console import Console

    method = args.method or ("static" if args.calibration is not None else "dynamic")
    if method == "static" and args.calibration is None:
        raise CliError("--method static needs --calibration DATA.npz to calibrate on")
    _check_out(args.out, args.model)
    calibration = (
        read_rows(args.calibration, "--calibration") if args.calibration is not None else None
    )
    evaluation = read_rows(args.evaluation, "--eval") if args.evaluation is not None else None
    # ONNX Runtime's own warnings (unused initializers in the calibration graph) are noise
    # here; this process only runs this command.
    onnxruntime.set_default_logger_severity(3)
    report = quantize_model(
        args.model, args.out, calibration=calibration, method=method,
        per_channel=args.per_channel, evaluation=evaluation,
    )
    console = Console()
    console.print(render_report(report))
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {report.output}", highlight=False)
    return 0


def register(models_subparsers) -> None:
    """Add ``quantize`` to the subparsers of the ``models`` command group."""
    parser = models_subparsers.add_parser(
        "quantize",
        help="make an int8 variant of an ONNX model and compare it with the original",
        description="Quantize an ONNX model to int8 with ONNX Runtime, check that it loads "
        "with the same signature, write it atomically and print size, latency, agreement and "
        "accuracy beside the original.",
    )
    parser.add_argument("model", type=Path, metavar="FILE", help="the ONNX model to quantize")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="where to write the quantized model")
    parser.add_argument("--calibration", type=Path, default=None, metavar="DATA.npz",
                        help="rows to calibrate on (X; optional labels y); also the rows "
                        "measured on unless --eval is given")
    parser.add_argument("--eval", dest="evaluation", type=Path, default=None,
                        metavar="DATA.npz",
                        help="rows to compare the models on (X; optional labels y for "
                        "accuracy); default: the calibration rows, else 256 random rows")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="static: int8 weights and activations, calibrated (the default "
                        "with --calibration); dynamic: int8 weights, activations quantized at "
                        "run time (the default without)")
    parser.add_argument("--per-channel", action="store_true",
                        help="one scale per output channel of each weight")
    parser.set_defaults(handler=_cmd_quantize)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgecloud models quantize ...`` on its own (``python -m edgecloud.quantize_cli``)."""
    parser = argparse.ArgumentParser(prog="edgecloud")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = sub.add_parser("models", help="work with model files")
    register(models.add_subparsers(dest="models_command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
