"""Routing overhead at the edge: is the router invisible?

The agent answering confident rows at the edge (decode, run, score, plan,
record, metrics, encode) against a bare grpc.aio v2 server that runs the same
ONNX model inline and does nothing else. Each server runs in its own process;
the same load generator drives both, alternating between them, so both see the
same machine noise. Printed in one table, each figure beside its baseline:

1. p50 latency, 1 row per request, one request in flight (sequential unary calls).
2. Server CPU time per request, 1 row per request, 64 requests in flight
   (grpc.aio client; CPU read from the server process).
3. p50 latency, 64 rows per request, one request in flight.
4. In process, 1 row: ``OnnxModel.run`` + ``score_rows`` + ``Router.plan`` +
   ``Router.record`` against a bare ``InferenceSession.run``.

Goals: 1 ≤ 1.10×, 2 ≤ 1.20×, 3 ≤ 1.20×, 4 ≤ 2.0×.

    python bench/routing_overhead.py [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import psutil
from digits_rows import digits_rows

from edgecloud.core import codec
from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecloud.router import RequestContext, Router, parse_policy, score_rows


class BareServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The baseline: decode raw FP32, run the session, encode raw FP32. Nothing else."""

    def __init__(self, path: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    async def ModelInfer(self, request, context):
        shape = tuple(request.inputs[0].shape)
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(shape)
        (y,) = self.session.run(None, {"pixels": x})
        out = pb.ModelInferResponse(model_name=request.model_name)
        out.outputs.add(name="probabilities", datatype="FP32", shape=y.shape)
        out.raw_output_contents.append(y.astype("<f4").tobytes())
        return out


def serve_bare(model: Path, port_file: Path) -> None:
    """The baseline server process (``--serve-bare``)."""

    async def run() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareServicer(model), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await asyncio.to_thread(port_file.write_text, f"127.0.0.1:{port}")
        await server.wait_for_termination()

    asyncio.run(run())


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    address: str

    @property
    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system


def _start(name: str, args: list[str], port_file: Path) -> Server:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server {name} did not start")
        time.sleep(0.05)
    return Server(name, proc, port_file.read_text().strip())


def start_servers(files: Path) -> tuple[Server, Server]:
    bare = _start("bare", [sys.executable, __file__, "--serve-bare", str(files / "edge.onnx"),
                           str(files / "bare.port")], files / "bare.port")
    agent = _start("agent", [
        sys.executable, "-m", "edgecloud", "agent", "run", "--listen", "127.0.0.1:0",
        "--data-dir", str(files / "agent"), "--model", f"digits={files / 'edge.onnx'}",
        "--policy", str(files / "policy.yaml"), "--port-file", str(files / "agent.port"),
        "--log-level", "warning"], files / "agent.port")
    return bare, agent


def requests_of(rows: np.ndarray, count: int, per_call: int, *, model: str = "digits",
                input_name: str = "pixels") -> list[pb.ModelInferRequest]:
    """``count`` pre-encoded requests of ``per_call`` rows each, cycling through ``rows``."""
    out = []
    for i in range(count):
        index = (np.arange(per_call) + i * per_call) % len(rows)
        out.append(codec.encode_infer_request(
            InferRequest(model_name=model, inputs={input_name: rows[index]})))
    return out


def sequential_p50(servers: tuple[Server, Server], requests: list) -> list[float]:
    """p50 (µs) of sequential calls, alternating call by call between the servers."""
    times: list[list[float]] = [[] for _ in servers]
    channels = [grpc.insecure_channel(s.address) for s in servers]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        for stub in stubs:  # warm up
            for request in requests[:300]:
                stub.ModelInfer(request, timeout=5)
        for request in requests:
            for i, stub in enumerate(stubs):
                start = time.perf_counter()
                stub.ModelInfer(request, timeout=5)
                times[i].append(time.perf_counter() - start)
    finally:
        for c in channels:
            c.close()
    return [float(np.percentile(t, 50)) * 1e6 for t in times]


async def _load(address: str, requests: list, in_flight: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        queue = iter(requests)

        async def worker() -> None:
            for request in queue:
                await stub.ModelInfer(request, timeout=30)

        await asyncio.gather(*(worker() for _ in range(in_flight)))


def cpu_per_request(servers: tuple[Server, Server], requests: list, in_flight: int,
                    rounds: int) -> list[float]:
    """Server CPU µs per request with ``in_flight`` concurrent calls; rounds alternate."""
    used = [0.0 for _ in servers]
    count = [0 for _ in servers]
    for server in servers:  # warm up
        asyncio.run(_load(server.address, requests[:500], in_flight))
    for _ in range(rounds):
        for i, server in enumerate(servers):
            before = server.cpu_seconds
            asyncio.run(_load(server.address, requests, in_flight))
            used[i] += server.cpu_seconds - before
            count[i] += len(requests)
    return [u / c * 1e6 for u, c in zip(used, count, strict=True)]


def in_process(files: Path, calls: int, rows: np.ndarray) -> list[float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(files / "edge.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    model = OnnxModel.load(files / "edge.onnx", name="digits")
    policy = parse_policy((files / "policy.yaml").read_text())
    router = Router(policy, clock=time.monotonic, rng=np.random.default_rng(0))
    ctx = RequestContext(time_left_s=0.25)
    bare_times, routed_times = [], []
    for i in range(calls):
        x = rows[i % len(rows)][None]
        start = time.perf_counter()
        session.run(None, {"pixels": x})
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        outputs = model.run({"pixels": x}, validated=True)
        confidence, predicted = score_rows(policy, outputs["probabilities"])
        plan = router.plan(confidence, predicted, ctx)
        router.record(plan)
        routed_times.append(time.perf_counter() - start)
    return [float(np.percentile(t, 50)) * 1e6 for t in (bare_times, routed_times)]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per measure (3000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of the 64-in-flight load (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        confident = digits_rows(files).confident
        single = requests_of(confident, args.calls, 1)
        many = requests_of(confident, max(args.calls // 3, 100), 64)
        servers = start_servers(files)
        try:
            rows = [
                ("p50 µs, 1 row, 1 in flight", sequential_p50(servers, single), 1.10),
                ("server CPU µs/request, 64 in flight",
                 cpu_per_request(servers, single, 64, args.rounds), 1.20),
                ("p50 µs, 64 rows, 1 in flight", sequential_p50(servers, many), 1.20),
            ]
        finally:
            for server in servers:
                server.proc.terminate()
                server.proc.wait(10)
        rows.append(("in process µs, 1 row (p50)", in_process(files, args.calls * 5, confident),
                     2.0))
    print("\nedge agent (answering at the edge) vs bare grpc.aio v2 server, same model")
    print(f"  {'measure':40} {'bare':>10} {'agent':>10} {'ratio':>7} {'goal':>7}")
    for label, (base, ours), goal in rows:
        ratio = ours / base
        mark = "ok" if ratio <= goal else "MISSED"
        print(f"  {label:40} {base:10.1f} {ours:10.1f} {ratio:7.2f} {'≤' + str(goal):>7} {mark}")


if __name__ == "__main__":
    main()
