"""``edgecloud demo --loop``: one turn of the improvement loop, through a real fleet.

A gateway and several agents run on loopback as separate processes, the agents taking
their model and policy from the fleet (signed with a key made for the run; every caller
has a token of its role):

1. a weak edge model, fitted on a small part of the digits training split, is published
   as edge version 1 with the bundled policy and a ``review_threshold``; the cloud model
   is the bundled one;
2. *before*: the calibration split streams through the agents, forced to the edge, forced
   to the cloud and routed by the policy; the rows the router marks hard go to the
   gateway's hard-example store (the agents' ledger upload), those the cloud was unsure
   of to its review queue too;
3. a scripted reviewer, with a reviewer's token, labels every queued row with its true
   label through the review service;
4. ``examples export`` and ``examples export --labelled`` write the hard rows and the
   reviewers' labels, and the example's own script (:mod:`edgecloud.examples.digits_loop`)
   fits the next edge model on the small part and those rows (the reviewer's label, else
   the cloud's answer);
5. that model is published as edge version 2, rolled out to every agent (and promoted
   once every agent runs it);
6. *after*: the test split, rows no one reviewed, streams through the agents the same way.

The table puts both phases side by side: edge accuracy, live escalation and hybrid
accuracy under the policy, and the escalation needed for the same hybrid accuracy —
for each phase, the least escalation at which the hybrid comes within the target gap of
cloud-only accuracy on that phase's rows, over the operating curve of the agents'
reported confidences (:func:`edgecloud.router.curves.operating_curve`). Every process it
started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import EdgecloudError
from edgecloud.core.hard_example_codec import example_from_pb
from edgecloud.core.signing import generate_keypair
from edgecloud.core.tensors import InferRequest
from edgecloud.dataset_export import export_examples
from edgecloud.demo import (
    PASSES,
    START_TIMEOUT_S,
    TASK,
    DemoError,
    PassResult,
    _Proc,
    _run_pass,
    _spawn,
    _stop_all,
    _summarise,
    _wait_for_port,
)
from edgecloud.examples import digits_loop
from edgecloud.examples.digits import write_example
from edgecloud.operations import GatewayOperator, publish_model_file, publish_policy_document
from edgecloud.protos.fleet.v1 import fleet_pb2 as fleet_pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as fleet_grpc
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecloud.router import Reason, dump_policy, parse_policy
from edgecloud.router.curves import operating_curve

HARD_REASONS = frozenset(reason.value for reason in (
    Reason.LOW_CONFIDENCE, Reason.NO_TIME, Reason.BUDGET_EXHAUSTED, Reason.CLOUD_UNAVAILABLE,
    Reason.CLOUD_FAILED))
"""Reasons of the rows an agent keeps as hard examples, as its replies say them (with no
shadow sampling; forced rows never): how many records the gateway should come to hold."""
DEFAULT_TARGET_GAP = 0.005
"""The hybrid accuracy both phases are compared at: this far below cloud-only accuracy."""
ROLLOUT_TIMEOUT_S = 60.0
"""Longest wait for every agent to run a version, or the gateway to hold the hard rows."""
REVIEW_THRESHOLD = 0.9
"""Rows the cloud answers with less confidence than this (the policy's score) go to review;
the other hard rows are learnt from the cloud's answer."""
REVIEWER_NAME = "scripted-reviewer"


@dataclass(frozen=True)
class Phase:
    """Rows streamed in one phase, and the edge version meant to answer them."""

    name: str
    split: str
    version: str


PHASES = (Phase("before", "calibration", "1"), Phase("after", "test", "2"))


# --------------------------------------------------------------------------- figures


def escalation_for_gap(confidence: np.ndarray, edge_pred: np.ndarray, cloud_pred: np.ndarray,
                       y: np.ndarray, gap: float) -> dict:
    """The least escalation at which the hybrid comes within ``gap`` of cloud-only accuracy.

    Rows whose confidence is below a threshold escalate (the cloud's answer), the rest
    keep the edge's; the curve over every threshold is the router's, and the point is the
    least escalating one whose hybrid accuracy reaches the target (ties: more accurate,
    then lower threshold).
    """
    cloud_correct = cloud_pred == y
    curve = operating_curve(confidence, edge_pred == y, cloud_correct)
    target = float(np.mean(cloud_correct)) - gap
    index = curve.index_reaching(target * len(y))
    if index is None:  # a gap below zero asks for more than cloud-only: escalate everything
        index = len(curve.thresholds) - 1
    return {
        "target_accuracy": target,
        "escalation_rate": float(curve.escalation[index]),
        "hybrid_accuracy": float(curve.accuracy[index]),
        "threshold": float(curve.thresholds[index]),
    }


def phase_figures(results: Mapping[str, PassResult], y: np.ndarray, gap: float) -> dict:
    """One phase's figures from its three passes (edge-only, cloud-only, hybrid)."""
    summaries = {name: _summarise(results[name], y) for name, _ in PASSES}
    edge, cloud = results["edge_only"], results["cloud_only"]
    hybrid = summaries["hybrid"]
    return {
        "rows": len(y),
        "edge_accuracy": summaries["edge_only"]["accuracy"],
        "cloud_accuracy": summaries["cloud_only"]["accuracy"],
        "hybrid_accuracy": hybrid["accuracy"],
        "escalation_rate": hybrid["escalation_rate"],
        "hard_rows": sum(reason in HARD_REASONS for reason in results["hybrid"].reasons),
        "model_versions": sorted({v for r in results.values() for v in r.versions if v}),
        "errors": sum(s["errors"] for s in summaries.values()),
        "same_accuracy": escalation_for_gap(edge.confidences, edge.predictions,
                                            cloud.predictions, y, gap),
        "passes": summaries,
    }


def _table(figures: dict, gap: float) -> Table:
    before, after = figures["before"], figures["after"]
    table = Table(title="digits: edge v1 → hard rows reviewed → retrained → edge v2")
    for column in ("", "before (v1)", "after (v2)", "change"):
        table.add_column(column, justify="left" if not column else "right")

    def row(label: str, key: Callable[[dict], float], fmt: str, unit: float = 100.0) -> None:
        a, b = key(before), key(after)
        table.add_row(label, f"{a * unit:{fmt}}", f"{b * unit:{fmt}}",
                      f"{(b - a) * unit:+{fmt}}")

    table.add_row("rows", f"{before['rows']} (calibration)", f"{after['rows']} (test)", "")
    row("edge accuracy %", lambda f: f["edge_accuracy"], ".2f")
    row("cloud accuracy %", lambda f: f["cloud_accuracy"], ".2f")
    row("hybrid accuracy % (policy)", lambda f: f["hybrid_accuracy"], ".2f")
    row("escalated % (policy)", lambda f: f["escalation_rate"], ".1f")
    row(f"escalated % at cloud − {gap * 100:g} pt",
        lambda f: f["same_accuracy"]["escalation_rate"], ".1f")
    row("  hybrid accuracy % at it", lambda f: f["same_accuracy"]["hybrid_accuracy"], ".2f")
    table.add_row("hard rows to the gateway", str(before["hard_rows"]),
                  str(after["hard_rows"]), "")
    return table


# --------------------------------------------------------------------------- the fleet


async def _answering_version(address: str, row: np.ndarray) -> str | None:
    """The edge version that answers one row at this agent now; None while it cannot."""
    request = codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"pixels": row}, parameters={"route": "edge"})
    )
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request,
                                                                               timeout=5.0)
        except grpc.aio.AioRpcError:
            return None
    return str(codec.decode_infer_response(reply).parameters.get("model_version", ""))


def wait_for_version(addresses: list[str], version: str, row: np.ndarray,
                     timeout_s: float = ROLLOUT_TIMEOUT_S) -> None:
    """Wait until every agent answers with edge ``version``; DemoError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    waiting = list(addresses)
    while waiting:
        running = asyncio.run(_versions(waiting, row))
        waiting = [a for a, v in zip(waiting, running, strict=True) if v != version]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"agents {', '.join(waiting)} did not run edge version {version} "
                            f"within {timeout_s:.0f} s")
        time.sleep(0.1)


async def _versions(addresses: list[str], row: np.ndarray) -> list[str | None]:
    return list(await asyncio.gather(*(_answering_version(a, row) for a in addresses)))


def wait_for_hard_rows(op: GatewayOperator, expected: int,
                       timeout_s: float = ROLLOUT_TIMEOUT_S) -> int:
    """Wait until the gateway holds at least ``expected`` hard examples of the task (the
    agents upload theirs every few seconds); returns how many it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = sum(1 for _ in op.hard_examples(TASK))
        if held >= expected:
            return held
        if time.monotonic() > deadline:
            raise DemoError(f"the gateway holds {held} hard examples of {TASK} after "
                            f"{timeout_s:.0f} s; the agents marked {expected} rows hard")
        time.sleep(0.25)


def scripted_review(gateway: str, token: str, truth: Mapping[bytes, int],
                    timeout_s: float = ROLLOUT_TIMEOUT_S) -> int:
    """The reviewer: label every row waiting in the gateway's review queue with its true
    label (``truth``: a row's pixel bytes → its label), through the review service with a
    reviewer's token; returns the rows labelled. Rows it knows no label for stay queued.
    """
    labelled = 0
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(gateway) as channel:
        review = fleet_grpc.ReviewServiceStub(channel)
        auth = call_metadata(token)
        while time.monotonic() < deadline:
            reply = review.ListReviews(fleet_pb.ListReviewsRequest(task=TASK, limit=1000),
                                       metadata=auth, timeout=30)
            known = [(item.review_id, truth.get(_pixels(item))) for item in reply.items]
            known = [(review_id, label) for review_id, label in known if label is not None]
            if not known:
                break
            for review_id, label in known:
                review.LabelReview(fleet_pb.LabelReviewRequest(review_id=review_id,
                                                               label=label),
                                   metadata=auth, timeout=30)
                labelled += 1
    return labelled


def _pixels(item: fleet_pb.ReviewItem) -> bytes:
    """The queued row's pixels, as the bytes of a float32 row of the data set."""
    inputs = {row.name: row for row in example_from_pb(item.example).example.inputs}
    return np.ascontiguousarray(inputs["pixels"].array(), dtype=np.float32).tobytes()


def _tokens(folder: Path, agents: int) -> dict[str, str]:
    """Bearer tokens for the run (an operator, a reviewer, one per agent), and the gateway's
    tokens file; returns token by holder."""
    tokens = {"operator": secrets.token_urlsafe(24), "reviewer": secrets.token_urlsafe(24)}
    tokens.update({f"agent-{k}": secrets.token_urlsafe(24) for k in range(agents)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.yaml").write_text(yaml.safe_dump({
        "operators": [tokens["operator"]],
        "reviewers": {tokens["reviewer"]: REVIEWER_NAME},
        "agents": {tokens[f"agent-{k}"]: f"loop-agent-{k}" for k in range(agents)},
    }), encoding="utf-8")
    for k in range(agents):
        (folder / f"agent-{k}.token").write_text(tokens[f"agent-{k}"] + "\n", encoding="utf-8")
    return tokens


def review_policy(document: bytes, threshold: float = REVIEW_THRESHOLD) -> bytes:
    """The policy with ``review_threshold``: rows the cloud answered less surely go to review."""
    policy = parse_policy(document)
    return dump_policy(policy.model_copy(update={"review_threshold": threshold})).encode()


# --------------------------------------------------------------------------- the loop


def _stream_phase(bar: Progress, phase: Phase, addresses: list[str], streams: int,
                  x: np.ndarray) -> dict[str, PassResult]:
    results = {}
    for name, route in PASSES:
        job = bar.add_task(f"{phase.name:<6} {name:<10}", total=len(x))
        results[name] = asyncio.run(_run_pass(addresses, streams, route, x,
                                              lambda job=job: bar.advance(job)))
    return results


def _check_versions(phase: Phase, results: Mapping[str, PassResult]) -> None:
    answered = {v for r in results.values() for v in r.versions if v}
    if answered - {phase.version}:
        raise DemoError(f"phase {phase.name}: rows answered by edge versions "
                        f"{sorted(answered)}, expected only {phase.version}")


def run_loop(agents: int = 3, streams: int = 2, json_path: Path | None = None,
             small_rows: int = digits_loop.SMALL_ROWS,
             target_gap: float = DEFAULT_TARGET_GAP) -> int:
    """Run one turn of the loop; returns the process exit code."""
    console = Console()
    procs: list[_Proc] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgecloud-loop-") as tmp:
        work = Path(tmp)
        files = work / "digits"
        write_example(files)
        splits = {}
        for phase in PHASES:
            with np.load(files / f"{phase.split}.npz") as data:
                splits[phase.name] = (data["X"], data["y"])
        truth = {row.tobytes(): int(label)
                 for x, y in splits.values() for row, label in zip(x, y, strict=True)}
        op: GatewayOperator | None = None
        try:
            with console.status(f"fitting edge version 1 on {small_rows} training rows"):
                small = digits_loop.small_part(small_rows)
                v1 = digits_loop.weak_edge(small)
                (work / "edge-v1.onnx").write_bytes(v1.onnx)
                private_key, public_key = generate_keypair(work / "keys")
                tokens = _tokens(work / "tokens", agents)
            with console.status(f"starting a gateway and {agents} agents"):
                gateway = _spawn("gateway", [
                    "gateway", "serve", "--listen", "127.0.0.1:0",
                    "--data-dir", str(work / "gateway"),
                    "--model", f"{TASK}={files / 'cloud.onnx'}",
                    "--trust-key", str(public_key),
                    "--tokens-file", str(work / "tokens" / "tokens.yaml"),
                ], work)
                procs.append(gateway)
                gateway_address = _wait_for_port(gateway, started + START_TIMEOUT_S)
                op = GatewayOperator(gateway_address, token=tokens["operator"])
                published_v1 = publish_model_file(op, work / "edge-v1.onnx", name=TASK,
                                                  target="edge", key=private_key)
                publish_policy_document(op, review_policy((files / "policy.yaml").read_bytes()),
                                        key=private_key)
                for k in range(agents):
                    procs.append(_spawn(f"agent-{k}", [
                        "agent", "run", "--gateway", gateway_address,
                        "--listen", "127.0.0.1:0", "--data-dir", str(work / f"agent-{k}"),
                        "--agent-id", f"loop-agent-{k}", "--labels", f"slot={k}",
                        "--trust-key", str(public_key),
                        "--token-file", str(work / "tokens" / f"agent-{k}.token"),
                    ], work))
                addresses = [_wait_for_port(p, time.monotonic() + START_TIMEOUT_S)
                             for p in procs[1:]]
                probe = splits["before"][0][:1]
                wait_for_version(addresses, published_v1["version"], probe)
            console.print(f"gateway on {gateway_address}; agents on {', '.join(addresses)} "
                          f"run edge version {published_v1['version']} "
                          f"(fitted on {v1.rows} rows)")

            figures: dict = {}
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                before = PHASES[0]
                x, y = splits[before.name]
                results = _stream_phase(bar, before, addresses, streams, x)
            _check_versions(before, results)
            figures["before"] = phase_figures(results, y, target_gap)

            with console.status("waiting for the agents' hard rows at the gateway"):
                held = wait_for_hard_rows(op, figures["before"]["hard_rows"])
            with console.status("the reviewer labels the review queue"):
                reviewed = scripted_review(gateway_address, tokens["reviewer"], truth)
            # `examples export`, and `examples export --labelled` (the reviewers' labels).
            summary = export_examples(op.hard_examples(TASK), work / "hard")
            labelled_summary = export_examples(op.hard_examples(TASK), work / "reviewed",
                                               op.review_labels(TASK))
            console.print(f"gateway holds {held} hard rows; the reviewer labelled {reviewed}; "
                          f"exported {summary.records} hard rows, {labelled_summary.records} "
                          "of them labelled")

            with console.status("retraining the edge model"):
                labelled = digits_loop.labelled_rows(work / "hard", work / "reviewed")
                v2 = digits_loop.retrain(small, labelled)
                (work / "edge-v2.onnx").write_bytes(v2.onnx)
            with console.status("publishing and rolling out edge version 2"):
                published_v2 = publish_model_file(op, work / "edge-v2.onnx", name=TASK,
                                                  target="edge", key=private_key)
                op.rollout("start", TASK, version=published_v2["version"], percent=100.0)
                wait_for_version(addresses, published_v2["version"], probe)
                op.rollout("promote", TASK, target="edge")
            console.print(f"edge version {published_v2['version']} (fitted on {v2.rows} rows: "
                          f"{labelled.by_reviewer} labelled by the reviewer, "
                          f"{labelled.by_cloud} by the cloud's answer) runs on every agent")

            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                after = PHASES[1]
                x, y = splits[after.name]
                results = _stream_phase(bar, after, addresses, streams, x)
            _check_versions(after, results)
            figures["after"] = phase_figures(results, y, target_gap)
            running = asyncio.run(_versions(addresses, probe))
        except (DemoError, EdgecloudError, ValueError) as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            return 1
        finally:
            if op is not None:
                op.close()
            _stop_all(procs)

    console.print(_table(figures, target_gap))
    need_before = figures["before"]["same_accuracy"]["escalation_rate"]
    need_after = figures["after"]["same_accuracy"]["escalation_rate"]
    console.print(
        f"to come within {target_gap * 100:g} points of cloud-only accuracy the fleet "
        f"escalated {need_before:.1%} of inputs before the loop and {need_after:.1%} after "
        f"one turn."
    )
    if json_path is not None:
        payload = {
            "agents": agents, "streams_per_agent": streams, "target_gap": target_gap,
            "edge_versions": {"before": published_v1["version"],
                              "after": published_v2["version"]},
            "agents_running": running,
            "review_threshold": REVIEW_THRESHOLD,
            "training": {"small_rows": len(small.y), "exported": labelled.exported,
                         "hard_rows_held": held, "reviewed": reviewed,
                         "exported_labelled": labelled_summary.records,
                         "labelled_by_reviewer": labelled.by_reviewer,
                         "labelled_by_cloud": labelled.by_cloud,
                         "unlabelled": labelled.unlabelled,
                         "retrain_rows": v2.rows},
            **figures,
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"results written to {json_path}")
    failed = figures["before"]["errors"] + figures["after"]["errors"]
    return 0 if failed == 0 else 1
