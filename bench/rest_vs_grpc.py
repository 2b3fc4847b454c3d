"""v2 REST against v2 gRPC on the same agent: what does the HTTP port cost?

One agent process serves the bundled digits model on both ports; confident rows
(answered at the edge), one row per request. One load generator (this process,
asyncio: an aiohttp client for REST, grpc.aio for gRPC) drives each protocol in
turn, round after round, so all see the same machine noise. Three ways to call:
gRPC (raw tensors), REST with JSON tensors, REST with binary tensors (the binary
tensor extension, output binary too). Printed in one table, each REST figure beside
the gRPC one:

1. Server CPU time per request, 64 requests in flight (CPU read from the agent
   process, divided by the requests it answered).
2. p50 latency, one request in flight.
3. Server CPU time per request, one request in flight.

Goal: REST CPU per request at 64 in flight ≤ 1.5× gRPC.

    python bench/rest_vs_grpc.py [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import psutil
from digits_rows import digits_rows

from edgecloud.core import codec
from edgecloud.core.process import read_port_file
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

HEADER = "Inference-Header-Content-Length"
GOAL = 1.5


@dataclass
class Agent:
    proc: subprocess.Popen
    grpc_address: str
    http_address: str

    @property
    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system


def start_agent(files: Path) -> Agent:
    port_file = files / "agent.port"
    proc = subprocess.Popen([
        sys.executable, "-m", "edgecloud", "agent", "run", "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0", "--data-dir", str(files / "agent"),
        "--model", f"digits={files / 'edge.onnx'}", "--policy", str(files / "policy.yaml"),
        "--port-file", str(port_file), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.05)
    grpc_address, http_address = read_port_file(port_file)
    assert http_address is not None
    return Agent(proc, grpc_address, http_address)


@dataclass
class Calls:
    """The same rows, ready to send each way."""

    grpc: list = field(default_factory=list)
    json: list[bytes] = field(default_factory=list)
    binary: list[bytes] = field(default_factory=list)
    binary_header: list[str] = field(default_factory=list)


def calls_of(rows: np.ndarray, count: int) -> Calls:
    calls = Calls()
    for i in range(count):
        x = rows[i % len(rows)][None]
        calls.grpc.append(codec.encode_infer_request(
            InferRequest(model_name="digits", inputs={"pixels": x})))
        calls.json.append(json.dumps({"inputs": [{
            "name": "pixels", "datatype": "FP32", "shape": [1, 64],
            "data": x.ravel().tolist()}]}).encode())
        raw = x.astype("<f4").tobytes()
        header = json.dumps({
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                        "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True}}).encode()
        calls.binary.append(header + raw)
        calls.binary_header.append(str(len(header)))
    return calls


async def _grpc_load(address: str, calls: Calls, in_flight: int) -> list[float]:
    times: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        queue = iter(calls.grpc)

        async def worker() -> None:
            for request in queue:
                start = time.perf_counter()
                await stub.ModelInfer(request, timeout=30)
                times.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return times


async def _rest_load(address: str, calls: Calls, in_flight: int, binary: bool) -> list[float]:
    times: list[float] = []
    url = f"http://{address}/v2/models/digits/infer"
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        if binary:
            queue = iter([(body, {HEADER: length, "Content-Type": "application/octet-stream"})
                          for body, length in zip(calls.binary, calls.binary_header,
                                                  strict=True)])
        else:
            queue = iter([(body, {"Content-Type": "application/json"})
                          for body in calls.json])

        async def worker() -> None:
            for body, headers in queue:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"REST call answered {response.status}")
                times.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return times


WAYS = ("gRPC", "REST JSON", "REST binary")


def run_load(agent: Agent, way: str, calls: Calls, in_flight: int) -> list[float]:
    if way == "gRPC":
        return asyncio.run(_grpc_load(agent.grpc_address, calls, in_flight))
    return asyncio.run(_rest_load(agent.http_address, calls, in_flight, way == "REST binary"))


def measure(agent: Agent, calls: Calls, in_flight: int, rounds: int
            ) -> dict[str, tuple[float, float]]:
    """Per way: (server CPU µs per request, p50 µs), rounds alternating between ways."""
    cpu = dict.fromkeys(WAYS, 0.0)
    count = dict.fromkeys(WAYS, 0)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    warm = Calls(calls.grpc[:300], calls.json[:300], calls.binary[:300],
                 calls.binary_header[:300])
    for way in WAYS:
        run_load(agent, way, warm, in_flight)
    for _ in range(rounds):
        for way in WAYS:
            before = agent.cpu_seconds
            times[way] += run_load(agent, way, calls, in_flight)
            cpu[way] += agent.cpu_seconds - before
            count[way] += len(calls.grpc)
    return {way: (cpu[way] / count[way] * 1e6, float(np.percentile(times[way], 50)) * 1e6)
            for way in WAYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per measure (3000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of each measure (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        calls = calls_of(digits_rows(files).confident, args.calls)
        agent = start_agent(files)
        try:
            many = measure(agent, calls, 64, args.rounds)
            one = measure(agent, Calls(calls.grpc[:args.calls // 3],
                                       calls.json[:args.calls // 3],
                                       calls.binary[:args.calls // 3],
                                       calls.binary_header[:args.calls // 3]), 1, args.rounds)
        finally:
            agent.proc.terminate()
            agent.proc.wait(10)
    rows = [
        ("server CPU µs/request, 64 in flight", {w: many[w][0] for w in WAYS}, GOAL),
        ("p50 µs, 1 in flight", {w: one[w][1] for w in WAYS}, None),
        ("server CPU µs/request, 1 in flight", {w: one[w][0] for w in WAYS}, None),
    ]
    print("\nagent v2 REST vs v2 gRPC (digits, 1 row per request, answered at the edge)")
    print(f"  {'measure':38} {'gRPC':>8} {'JSON':>8} {'ratio':>6} {'binary':>8} {'ratio':>6}"
          f" {'goal':>6}")
    for label, figures, goal in rows:
        base = figures["gRPC"]
        by_json, by_binary = figures["REST JSON"], figures["REST binary"]
        line = (f"  {label:38} {base:8.1f} {by_json:8.1f} {by_json / base:6.2f} "
                f"{by_binary:8.1f} {by_binary / base:6.2f}")
        if goal is not None:
            worst = max(by_json, by_binary) / base
            line += f" {'≤' + str(goal):>6} {'ok' if worst <= goal else 'MISSED'}"
        print(line)


if __name__ == "__main__":
    main()
