"""A fast answer, then a better one: does the app's answer come as fast as an edge answer?

A gateway and an agent run in their own processes; one client sends the same
low-confidence rows (rows the policy escalates) three ways, call by call in
turn, so all three see the same machine noise:

1. ``route=edge``: the edge model's answer, nothing escalated (the baseline);
2. ``answer=fast_then_better``: the edge answer at once, the row escalated
   behind it (the answer's latency; the cloud call overlaps the next calls);
3. no parameter: the row escalated, the answer waits for the cloud.

Printed: p50 and p99 latency of each, and each beside the baseline. Goal: the
fast answer's p50 within 1.2× of the edge answer's.

    python bench/fast_then_better.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from digits_rows import digits_rows

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

WAYS = (("edge answer (route=edge)", {"route": "edge"}),
        ("fast answer (fast_then_better)", {"answer": "fast_then_better"}),
        ("cloud answer (escalated)", {}))


def _start(args: list[str], port_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgecloud", *args, "--port-file",
                             str(port_file), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{args[0]} did not start")
        time.sleep(0.05)
    return proc, port_file.read_text().splitlines()[0].strip()


def measure(address: str, rows: np.ndarray, calls: int) -> list[np.ndarray]:
    """Latencies (µs) of each way, the ways taking turns call by call."""
    requests = [[codec.encode_infer_request(InferRequest(
        model_name="digits", inputs={"pixels": rows[i % len(rows)][None]}, parameters=params))
        for i in range(calls)] for _, params in WAYS]
    times: list[list[float]] = [[] for _ in WAYS]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for way in requests:  # warm up
            for request in way[:100]:
                stub.ModelInfer(request, timeout=5)
        for i in range(calls):
            for way, sent in enumerate(requests):
                start = time.perf_counter()
                stub.ModelInfer(sent[i], timeout=5)
                times[way].append(time.perf_counter() - start)
    return [np.array(t) * 1e6 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls of each way (1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        unsure = digits_rows(files).unsure
        gateway, gateway_address = _start(
            ["gateway", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(files / "gw"),
             "--model", f"digits={files / 'cloud.onnx'}"], files / "gw.port")
        try:
            agent, agent_address = _start(
                ["agent", "run", "--listen", "127.0.0.1:0", "--gateway", gateway_address,
                 "--data-dir", str(files / "agent"),
                 "--model", f"digits={files / 'edge.onnx'}",
                 "--policy", str(files / "policy.yaml")], files / "agent.port")
            try:
                latencies = measure(agent_address, unsure, args.calls)
            finally:
                agent.terminate()
                agent.wait(30)
        finally:
            gateway.terminate()
            gateway.wait(30)
    base50, base99 = np.percentile(latencies[0], [50, 99])
    print(f"\n{len(unsure)} low-confidence digits rows, {args.calls} calls of each way, "
          "one in flight, taking turns")
    print(f"  {'answer':34} {'p50 µs':>9} {'ratio':>6} {'p99 µs':>9} {'ratio':>6}")
    for (label, _), times in zip(WAYS, latencies, strict=True):
        p50, p99 = np.percentile(times, [50, 99])
        print(f"  {label:34} {p50:9.0f} {p50 / base50:6.2f} {p99:9.0f} {p99 / base99:6.2f}")
    fast = np.percentile(latencies[1], 50) / base50
    print(f"  goal: fast answer p50 ≤ 1.2× the edge answer's: "
          f"{'ok' if fast <= 1.2 else 'MISSED'} ({fast:.2f}×)")


if __name__ == "__main__":
    main()
