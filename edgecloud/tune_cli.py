"""``edgecloud policy tune`` and ``edgecloud policy show``: make a routing policy, and read one.

::

    edgecloud policy tune --edge edge.onnx --cloud cloud.onnx --data calibration.npz \\
        --out policy.yaml [--target-gap 0.005 [--confidence 0.9] | --target-escalation 0.15] \\
        [--plot curve.png] [--name digits] [--base old-policy.yaml]
    edgecloud policy tune --field shadow.jsonl --out policy.yaml ...
    edgecloud policy show policy.yaml

``tune`` runs both ONNX models over a labelled ``.npz`` (``X`` and ``y``)
with :mod:`edgecloud.tuning_data`, hands their class scores and a
:class:`router.TuningTarget` to :func:`router.tune`, writes the policy
atomically, and prints the operating points of every confidence score next
to edge-only, cloud-only and the oracle. With ``--field`` it tunes from
shadow samples an agent logged, one JSON object per line,
``{"edge": [K scores], "cloud": [K scores]}``; there are no labels in the
field, so the cloud's answer stands in for the truth and "accuracy" means
agreement with the cloud (see :func:`router.tuner.field_arrays`).

:func:`register_policy_commands` adds the commands under `edgecloud policy`; :func:`main`
runs them on their own (``python -m edgecloud.tune_cli policy tune ...``).
Bad flags raise ``edgecloud.common_cli.CliError`` and the libraries raise
domain errors (``EdgecloudError``, and ``ValueError`` from the router, mapped
here); the command prints either as ``edgecloud: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from edgecloud.common_cli import CliError, run
from edgecloud.core.datasets import read_npz
from edgecloud.core.files import atomic_write

if TYPE_CHECKING:
    from edgecloud.router import Policy, TuningReport, TuningTarget

DEFAULT_TARGET_GAP = 0.005
"""The target when none is given: within half a point of the cloud's accuracy."""

SCORE_CHOICES = ("margin", "max_prob", "entropy")


# ----------------------------------------------------------------------------- parser


def register_policy_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``tune`` and ``show`` to the subcommands of an existing ``policy`` command."""
    tune = commands.add_parser(
        "tune",
        help="tune a routing policy from the edge and cloud models and labelled data",
        description="Run both models over labelled data (or read field records), pick the "
        "confidence score, temperature and threshold that meet the target, write the policy "
        "and print the operating points.",
    )
    source = tune.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="FILE.npz",
                        help="labelled data: X [N, ...] model input, y [N] class indices")
    source.add_argument("--field", type=Path, metavar="FILE.jsonl",
                        help='shadow samples, one {"edge": [...], "cloud": [...]} per line; '
                        "tunes on agreement with the cloud, not accuracy")
    tune.add_argument("--edge", type=Path, metavar="FILE", help="edge ONNX model (with --data)")
    tune.add_argument("--cloud", type=Path, metavar="FILE",
                      help="cloud ONNX model (with --data)")
    tune.add_argument("--out", type=Path, required=True, metavar="POLICY",
                      help="policy file to write (YAML)")
    tune.add_argument("--plot", type=Path, default=None, metavar="PNG",
                      help="draw accuracy against escalation to this PNG (needs matplotlib)")
    tune.add_argument("--task", "--name", dest="name", default=None, metavar="TASK",
                      help="task the policy routes, the name `policy publish` and agents "
                      "know it by (required unless --base names it)")
    tune.add_argument("--base", type=Path, default=None, metavar="POLICY",
                      help="start from this policy (budget, latency, breaker, shadow rate kept)")
    target = tune.add_mutually_exclusive_group()
    target.add_argument("--target-escalation", type=float, default=None, metavar="R",
                        help="escalate at most this fraction of rows, 0 < R < 1")
    target.add_argument("--target-gap", type=float, default=None, metavar="EPS",
                        help="escalate as little as possible while accuracy is within EPS of "
                        f"the cloud's (default {DEFAULT_TARGET_GAP})")
    tune.add_argument("--confidence", type=float, default=None, metavar="1-δ",
                      help="certify the gap at this confidence (with --target-gap)")
    tune.add_argument("--scores-kind", choices=("probabilities", "logits"), default=None,
                      help="what the edge model outputs (default: the base policy's, "
                      "else probabilities)")
    tune.add_argument("--score", action="append", choices=SCORE_CHOICES, default=None,
                      help="consider only this confidence score (repeatable; default all)")
    tune.add_argument("--temperature", type=float, default=None,
                      help="use this temperature instead of fitting one")
    tune.add_argument("--scores-output", default=None, metavar="NAME",
                      help="edge model output that holds the class scores (default: the base "
                      "policy's, else the model's one float [N, classes] output)")
    tune.add_argument("--chunk-rows", type=int, default=None,
                      help="rows per model run (default 1024, or the model's fixed batch size)")
    tune.set_defaults(handler=cmd_policy_tune)

    show = commands.add_parser("show", help="validate a policy file and print its fields")
    show.add_argument("file", type=Path, metavar="POLICY", help="the policy file (YAML or JSON)")
    show.set_defaults(handler=cmd_policy_show)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``policy tune`` or ``policy show`` as the ``edgecloud`` command would."""
    parser = argparse.ArgumentParser(prog="edgecloud")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    policy = sub.add_parser("policy", help="routing policies")
    register_policy_commands(policy.add_subparsers(dest="policy_command", required=True,
                                                   metavar="COMMAND"))
    return run(parser.parse_args(argv))


# ----------------------------------------------------------------------------- tune


def cmd_policy_tune(args: argparse.Namespace) -> int:
    """``edgecloud policy tune``."""
    from edgecloud.router import PolicyError, TuningTarget, dump_policy

    target_escalation, target_gap, confidence = _targets(args)
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise CliError("--chunk-rows must be at least 1")
    if args.temperature is not None and not (
        math.isfinite(args.temperature) and args.temperature > 0
    ):
        raise CliError("--temperature must be a number > 0")
    _check_output(args.out, "--out")
    if args.plot is not None:
        _check_output(args.plot, "--plot")
        if importlib.util.find_spec("matplotlib") is None:
            raise CliError("--plot needs matplotlib, which is not installed; "
                         "install it with: pip install 'edgecloud[plot]'")
    base = None
    if args.base is not None:
        try:
            base = _read_policy(args.base, "--base")
        except PolicyError as exc:
            raise CliError(f"--base {args.base}: {exc}") from None
    if args.name is None and base is None:
        raise CliError("policy tune needs --task NAME, the task the policy routes (or --base "
                       "POLICY, whose task it keeps)")
    kind = args.scores_kind or (base.scores_kind.value if base is not None else "probabilities")
    tuned_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    console = Console()
    try:
        target = TuningTarget(
            kind=kind, target_escalation=target_escalation, target_gap=target_gap,
            confidence=confidence, base_policy=base, name=args.name,
            temperature=args.temperature, scores=args.score,
        )
        if args.data is not None:
            policy, report = _tune_on_data(args, target, console, tuned_at)
        else:
            policy, report = _tune_on_field(args, target, tuned_at)
    except ValueError as exc:  # TuningTarget's checks and TuningError included
        raise CliError(str(exc)) from None

    atomic_write(args.out, dump_policy(policy).encode("utf-8"))
    if args.plot is not None:
        _plot(report, policy.name, args.plot)
    console.print(_table(report, policy.name))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"policy: {report.summary()}", highlight=False)
    console.print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""),
                  highlight=False)
    return 0


def _tune_on_data(
    args: argparse.Namespace, target: TuningTarget, console: Console, tuned_at: str
) -> tuple[Policy, TuningReport]:
    from edgecloud.router import Policy, Provenance, tune

    if args.edge is None or args.cloud is None:
        raise CliError("--data needs both --edge and --cloud models")
    base = target.base_policy
    edge_scores, cloud_scores, y, output = _score_data(args, base, console)
    start = base if base is not None else Policy(name=args.name, threshold=0.5)
    if base is None or base.scores_output is not None or args.scores_output is not None:
        # a base's "chosen automatically" (None) stays
        start = start.model_copy(update={"scores_output": output})
    provenance = Provenance(
        edge_model=args.edge.name, cloud_model=args.cloud.name,
        data=f"{args.data.name} (n={len(y)})", tuned_at=tuned_at,
    )
    return tune(edge_scores, cloud_scores, y,
                replace(target, base_policy=start, provenance=provenance))


def _tune_on_field(
    args: argparse.Namespace, target: TuningTarget, tuned_at: str
) -> tuple[Policy, TuningReport]:
    from edgecloud.router import Provenance, tune_from_field
    from edgecloud.tuning_data import read_field_records

    records = read_field_records(args.field, "--field")
    human = sum(1 for record in records if len(record) == 3)
    source = (f"{human} human labels, the rest the cloud's answers" if human
              else "labels are the cloud's answers")
    provenance = Provenance(
        edge_model=args.edge.name if args.edge else "",
        cloud_model=args.cloud.name if args.cloud else "",
        data=f"field records {args.field.name} (n={len(records)}; {source})",
        tuned_at=tuned_at,
    )
    return tune_from_field(records, replace(target, provenance=provenance))


def _targets(args: argparse.Namespace) -> tuple[float | None, float | None, float | None]:
    rate, gap, confidence = args.target_escalation, args.target_gap, args.confidence
    if rate is not None:
        if not 0.0 < rate < 1.0:
            raise CliError(f"--target-escalation must be between 0 and 1 (exclusive), got {rate}")
        if confidence is not None:
            raise CliError("--confidence certifies a --target-gap; it does not go with "
                         "--target-escalation")
        return rate, None, None
    if gap is None:
        gap = DEFAULT_TARGET_GAP
    if not 0.0 <= gap < 1.0:
        raise CliError(f"--target-gap must be at least 0 and below 1, got {gap}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise CliError(f"--confidence must be between 0 and 1 (exclusive), got {confidence}")
    return None, gap, confidence


def _check_output(path: Path, flag: str) -> None:
    if path.is_dir():
        raise CliError(f"{flag} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise CliError(f"{flag} {path}: folder {path.parent} does not exist")


def _read_policy(path: Path, flag: str) -> Policy:
    from edgecloud.router import parse_policy

    if not path.exists():
        raise CliError(f"{flag}: file {path} does not exist")
    if not path.is_file():
        raise CliError(f"{flag}: {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    return parse_policy(data)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_npz(path, "--data", require_y=True)
    assert y is not None
    return x, y


def _score_data(
    args: argparse.Namespace, base: Policy | None, console: Console
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Class scores of both models over the data, and the edge output used."""
    from edgecloud.tuning_data import (
        check_classes,
        chunk_rows_for,
        class_scores,
        cloud_scores_output,
        load_scoring_model,
        scores_output,
    )

    x, y = _load_npz(args.data)
    models = {
        "edge": load_scoring_model(args.edge, "edge", "--edge"),
        "cloud": load_scoring_model(args.cloud, "cloud", "--cloud"),
    }
    wanted = args.scores_output or (base.scores_output if base else None)
    edge_output = scores_output(models["edge"], "--edge", wanted)
    outputs = {
        "edge": edge_output,
        "cloud": cloud_scores_output(models["cloud"], models["edge"], edge_output, "--cloud"),
    }
    chunks = {role: chunk_rows_for(model, args.chunk_rows, f"--{role}")
              for role, model in models.items()}
    for role, model in models.items():
        how = ("named" if role == "edge" and wanted else "chosen: the one float [N, classes] "
               "output" if role == "edge" else "at the edge's position")
        rows = "1 row" if chunks[role] == 1 else f"{chunks[role]} rows"
        note = (f"; {rows} per run (its fixed batch size)"
                if model.fixed_batch_size is not None else "")
        console.print(f"{role} class scores: output {outputs[role]!r} ({how}){note}",
                      highlight=False)
    scores: dict[str, np.ndarray] = {}
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        for role, model in models.items():
            bar = progress.add_task(f"running the {role} model", total=x.shape[0])
            scores[role] = class_scores(
                model, x, outputs[role], role=role, source=str(args.data),
                chunk_rows=chunks[role],
                advance=lambda rows, bar=bar: progress.advance(bar, rows),
            )
    check_classes(scores["edge"], scores["cloud"], y, f"--data {args.data}")
    return scores["edge"], scores["cloud"], y, outputs["edge"]




def _pct(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}%}"


def _acc(value: float) -> str:
    return _pct(value, 2)


def _points(value: float) -> str:
    return f"{value * 100:+.2f} pt"


def _table(report: TuningReport, name: str) -> Table:
    from edgecloud.router.curves import gap_closed

    what = "agreement" if report.label_source == "cloud" else "accuracy"
    table = Table(title=f"{name}: operating points on {report.n} rows "
                  f"(temperature {report.temperature:.3g})",
                  caption="gap: cloud-only minus hybrid, in points; "
                  "closed: share of the edge-to-cloud gap closed")
    table.add_column("router", no_wrap=True)
    for column in ("threshold", "escalated", what, "gap", "closed"):
        table.add_column(column, justify="right", no_wrap=True)
    cloud, edge = report.cloud_accuracy, report.edge_accuracy
    oracle_closed = gap_closed(report.oracle_accuracy, edge, cloud)
    table.add_row("edge only", "", _pct(0.0), _acc(edge), _points(cloud - edge), _pct(0.0))
    table.add_row("cloud only", "", _pct(1.0), _acc(cloud), _points(0.0),
                  _pct(gap_closed(cloud, edge, cloud)))
    table.add_row("oracle", "", _pct(report.oracle_escalation), _acc(report.oracle_accuracy),
                  _points(cloud - report.oracle_accuracy), _pct(oracle_closed),
                  end_section=True)
    for score_name, score in report.scores.items():
        for index, point in enumerate(score.points):
            table.add_row(
                f"{score_name} ≤ {point.target_escalation:.0%}",
                f"{point.threshold:.4f}",
                _pct(point.escalation),
                _acc(point.accuracy),
                _points(point.gap_to_cloud),
                _pct(point.gap_closed),
                end_section=index == len(score.points) - 1,
            )
    table.add_row(f"chosen: {report.score}", f"{report.threshold:.4f}", _pct(report.escalation),
                  _acc(report.accuracy), _points(report.gap_to_cloud), _pct(report.gap_closed),
                  style="bold")
    return table


def _plot(report: TuningReport, name: str, path: Path) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed; "
                     "install it with: pip install 'edgecloud[plot]'") from None

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.add_subplot()
    edge, cloud = report.edge_accuracy * 100, report.cloud_accuracy * 100
    oracle_esc, oracle_acc = report.oracle_escalation * 100, report.oracle_accuracy * 100
    for score_name, score in report.scores.items():
        axes.plot(score.curve.escalation * 100, score.curve.accuracy * 100, linewidth=1.6,
                  label=score_name, zorder=3)
    # The oracle escalates the rows only the cloud gets right first, and the
    # rows only the edge gets right last.
    edge_only_right = oracle_acc - cloud
    axes.plot([0.0, oracle_esc, 100.0 - edge_only_right, 100.0], [edge, oracle_acc, oracle_acc,
              cloud], linestyle=":", color="tab:red", label="oracle", zorder=2)
    axes.axhline(edge, linestyle="--", color="tab:gray", linewidth=1, label="edge only")
    axes.axhline(cloud, linestyle="--", color="black", linewidth=1, label="cloud only")
    axes.plot([report.escalation * 100], [report.accuracy * 100], marker="o", markersize=10,
              markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, linestyle="",
              label=f"chosen: {report.score} < {report.threshold:.3f}", zorder=4)
    right = min(100.0, max(40.0, 1.6 * max(report.escalation, report.oracle_escalation) * 100))
    axes.set_xlim(0.0, right)
    low = min(edge, cloud, min(float(s.curve.accuracy.min()) for s in report.scores.values())
              * 100)
    high = max(oracle_acc, cloud)
    pad = max(0.2, 0.08 * (high - low))
    axes.set_ylim(low - pad, high + pad)
    axes.set_xlabel("escalated to the cloud (% of rows)")
    what = "agreement with the cloud" if report.label_source == "cloud" else "hybrid accuracy"
    axes.set_ylabel(f"{what} (%)")
    axes.set_title(f"{name}: {what} against escalation ({report.n} rows)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    try:
        figure.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise CliError(f"cannot write the plot {path}: {exc.strerror}") from None


# ----------------------------------------------------------------------------- show


_BAR = "█"


def cmd_policy_show(args: argparse.Namespace) -> int:
    """``edgecloud policy show``: validate a policy and print it."""
    from edgecloud.router import PolicyError

    try:
        policy = _read_policy(args.file, "policy show")
    except PolicyError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    console = Console()
    table = Table(title=f"policy {policy.name} version {policy.version} ({args.file})")
    table.add_column("field")
    table.add_column("value")
    for field, value in _fields(policy):
        table.add_row(field, value)
    console.print(table)
    histogram = policy.calibration_histogram
    if histogram is not None:
        bars = Table(title=f"calibration histogram of {policy.score} "
                     f"({histogram.total} scores, {len(histogram.counts)} bins)")
        bars.add_column("bin", justify="right")
        bars.add_column("count", justify="right")
        bars.add_column("")
        top = max(histogram.counts) or 1
        decimals = _decimals(histogram.edges)
        last = len(histogram.counts) - 1
        for index, (lo, hi, count) in enumerate(
            zip(histogram.edges, histogram.edges[1:], histogram.counts, strict=False)
        ):
            close = "]" if index == last else ")"
            bars.add_row(f"[{lo:.{decimals}f}, {hi:.{decimals}f}{close}", str(count),
                         _BAR * max(round(24 * count / top), 1 if count else 0))
        console.print(bars)
    return 0


def _decimals(edges: Sequence[float]) -> int:
    """Fewest decimals (3 to 8) that keep neighbouring bin edges apart."""
    for decimals in range(3, 9):
        shown = [round(edge, decimals) for edge in edges]
        if all(b > a for a, b in itertools.pairwise(shown)):
            return decimals
    return 8


def _fields(policy: Policy) -> list[tuple[str, str]]:
    rows = [
        ("name", policy.name),
        ("version", policy.version),
        ("score", str(policy.score)),
        ("temperature", f"{policy.temperature:g}"),
        ("threshold", f"{policy.threshold:g}"),
        ("class_thresholds", ", ".join(f"{c}: {t:g}" for c, t in
                                       sorted(policy.class_thresholds.items())) or "none"),
        ("scores_output", policy.scores_output or "(the first output)"),
        ("scores_kind", str(policy.scores_kind)),
    ]
    for section in ("latency", "budget", "breaker"):
        for key, value in getattr(policy, section).model_dump().items():
            text = "off" if value is None else f"{value:g}" if isinstance(value, float) else str(
                value)
            rows.append((f"{section}.{key}", text))
    rows.append(("shadow_rate", f"{policy.shadow_rate:g}"))
    for key, value in policy.provenance.model_dump().items():
        if value:
            rows.append((f"provenance.{key}", str(value)))
    if policy.calibration_histogram is None:
        rows.append(("calibration_histogram", "none (agents cannot report drift)"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
