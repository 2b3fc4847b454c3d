"""``edgecloud demo``: the whole system on one machine.

Starts a gateway and several agents on loopback as separate processes,
streams the digits test split through the agents three times (forced to the
edge, forced to the cloud, and routed by the policy), and prints accuracy,
escalation and latency side by side. Every process it started is stopped on
the way out, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from edgecloud.core import codec
from edgecloud.core.process import read_port_file
from edgecloud.core.tensors import InferRequest
from edgecloud.examples.digits import write_example
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

TASK = "digits"
START_TIMEOUT_S = 60.0
PASSES = (("edge_only", "edge"), ("cloud_only", "cloud"), ("hybrid", "auto"))


class DemoError(Exception):
    """The demo could not start its processes."""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    port_file: Path
    log_path: Path


@dataclass
class PassResult:
    """Answers of one pass over the test split."""

    predictions: np.ndarray
    routes: list[str]
    latencies_s: np.ndarray
    errors: list[str] = field(default_factory=list)
    confidences: np.ndarray | None = None
    """The edge's confidence in each row (the policy's score), as the agent reported it."""
    reasons: list[str] = field(default_factory=list)
    """Why each row went where it went."""
    versions: list[str] = field(default_factory=list)
    """The edge model version that answered each row."""


def _spawn(name: str, args: list[str], workdir: Path) -> _Proc:
    port_file = workdir / f"{name}.port"
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # the child keeps its own descriptor
    popen = subprocess.Popen(
        [sys.executable, "-m", "edgecloud", *args, "--port-file", str(port_file),
         "--log-format", "json"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return _Proc(name, popen, port_file, log_path)


def _wait_for_port(proc: _Proc, deadline: float) -> str:
    while time.monotonic() < deadline:
        if proc.port_file.exists():
            return read_port_file(proc.port_file)[0]
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-2000:]
            raise DemoError(f"{proc.name} exited with code {proc.popen.returncode}:\n{tail}")
        time.sleep(0.05)
    raise DemoError(f"{proc.name} did not start within {START_TIMEOUT_S:.0f} s")


def _stop_all(procs: list[_Proc], grace_s: float = 10.0) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.popen.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


async def _stream_rows(address: str, x: np.ndarray, rows: np.ndarray, route: str,
                       on_row: Callable[[int, pb.ModelStreamInferResponse, float], None]) -> None:
    """Send rows one at a time on one ModelStreamInfer stream, like a sensor would."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer()
        for i in rows:
            request = codec.encode_infer_request(
                InferRequest(model_name=TASK, inputs={"pixels": x[i:i + 1]},
                             parameters={"route": route}, id=str(i))
            )
            sent = time.perf_counter()
            await call.write(request)
            reply = await call.read()
            on_row(int(i), reply, time.perf_counter() - sent)
        await call.done_writing()
        await call.read()


async def _run_pass(addresses: list[str], streams: int, route: str, x: np.ndarray,
                    advance: Callable[[], None]) -> PassResult:
    n = len(x)
    predictions = np.full(n, -1, dtype=np.int64)
    routes = [""] * n
    reasons = [""] * n
    versions = [""] * n
    confidences = np.full(n, np.nan)
    latencies = np.zeros(n)
    errors: list[str] = []

    def on_row(i: int, reply: pb.ModelStreamInferResponse, seconds: float) -> None:
        latencies[i] = seconds
        if reply.error_message:
            errors.append(reply.error_message)
        else:
            answer = codec.decode_infer_response(reply.infer_response)
            predictions[i] = int(np.argmax(answer.outputs["probabilities"][0]))
            routes[i] = str(answer.parameters.get("route", ""))
            reasons[i] = str(answer.parameters.get("reason", ""))
            versions[i] = str(answer.parameters.get("model_version", ""))
            confidences[i] = float(answer.parameters.get("confidence", "nan"))
        advance()

    lanes = [(addr, s) for addr in addresses for s in range(streams)]
    chunks = np.array_split(np.arange(n), len(lanes))
    await asyncio.gather(*(
        _stream_rows(addr, x, chunk, route, on_row)
        for (addr, _), chunk in zip(lanes, chunks, strict=True)
    ))
    return PassResult(predictions, routes, latencies, errors, confidences, reasons, versions)


def _summarise(result: PassResult, y: np.ndarray) -> dict:
    n = len(y)
    routes = np.asarray(result.routes)
    lat_ms = result.latencies_s * 1000.0
    summary = {
        "accuracy": float(np.mean(result.predictions == y)),
        "escalation_rate": float(np.mean((routes == "cloud") | (routes == "edge_fallback"))),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "errors": len(result.errors),
        "rows": n,
        "by_route": {},
    }
    for route in ("edge", "cloud", "edge_fallback"):
        mask = routes == route
        if mask.any():
            summary["by_route"][route] = {
                "rows": int(mask.sum()),
                "p50_ms": float(np.percentile(lat_ms[mask], 50)),
                "p99_ms": float(np.percentile(lat_ms[mask], 99)),
            }
    return summary


def _table(results: dict[str, dict]) -> Table:
    table = Table(title="digits test split: edge-only vs cloud-only vs hybrid")
    for column in ("mode", "accuracy", "escalated", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for name, _ in PASSES:
        r = results[name]
        table.add_row(name.replace("_", "-"), f"{r['accuracy']:.2%}",
                      f"{r['escalation_rate']:.1%}", f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", str(r["errors"]))
    return table


def _route_table(hybrid: dict) -> Table:
    table = Table(title="hybrid latency by route")
    for column in ("route", "rows", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "route" else "left")
    for route, r in hybrid["by_route"].items():
        table.add_row(route, str(r["rows"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
    return table


def run_demo(agents: int = 3, streams: int = 2, json_path: Path | None = None) -> int:
    """Run the demo; returns the process exit code."""
    console = Console()
    procs: list[_Proc] = []
    with tempfile.TemporaryDirectory(prefix="edgecloud-demo-") as tmp:
        work = Path(tmp)
        files = work / "digits"
        write_example(files)
        with np.load(files / "test.npz") as data:
            x, y = data["X"], data["y"]
        n = len(y)
        try:
            started = time.monotonic()
            with console.status(f"starting a gateway and {agents} agents"):
                gateway = _spawn("gateway", [
                    "gateway", "serve", "--listen", "127.0.0.1:0",
                    "--data-dir", str(work / "gateway"),
                    "--model", f"{TASK}={files / 'cloud.onnx'}",
                ], work)
                procs.append(gateway)
                gateway_address = _wait_for_port(gateway, started + START_TIMEOUT_S)
                for k in range(agents):
                    procs.append(_spawn(f"agent-{k}", [
                        "agent", "run", "--gateway", gateway_address,
                        "--listen", "127.0.0.1:0", "--data-dir", str(work / f"agent-{k}"),
                        "--model", f"{TASK}={files / 'edge.onnx'}",
                        "--policy", str(files / "policy.yaml"),
                        "--agent-id", f"demo-agent-{k}", "--labels", f"slot={k}",
                    ], work))
                addresses = [_wait_for_port(p, started + START_TIMEOUT_S) for p in procs[1:]]
            console.print(f"gateway on {gateway_address}; agents on {', '.join(addresses)} "
                          f"(started in {time.monotonic() - started:.1f} s)")
            results: dict[str, dict] = {}
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                for name, route in PASSES:
                    job = bar.add_task(f"{name:<10}", total=n)
                    result = asyncio.run(_run_pass(addresses, streams, route, x,
                                                   lambda job=job: bar.advance(job)))
                    results[name] = _summarise(result, y)
        except DemoError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            return 1
        finally:
            _stop_all(procs)
    console.print(_table(results))
    console.print(_route_table(results["hybrid"]))
    gap = results["cloud_only"]["accuracy"] - results["hybrid"]["accuracy"]
    console.print(
        f"hybrid is {gap * 100:+.2f} points from cloud-only accuracy while escalating "
        f"{results['hybrid']['escalation_rate']:.1%} of inputs."
    )
    if json_path is not None:
        payload = {"rows": n, "agents": agents, "streams_per_agent": streams, **results}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"results written to {json_path}")
    failed = sum(r["errors"] for r in results.values())
    return 0 if failed == 0 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
