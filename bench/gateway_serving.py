"""Gateway serving overhead: the cloud gateway against a bare grpc.aio v2 server.

Both servers run the bundled cloud digits model in their own process; the
same load generator (this process) drives both, alternating between them, so
both see the same machine noise. Printed in one table, each figure beside its
baseline:

1. p50 latency, 1 row per request, one request in flight (sequential unary
   calls): a lone request must not wait for a batch that never comes.
2. Server CPU time per request, 1 row per request, 64 requests in flight
   (grpc.aio unary calls; CPU read from the server process).
3. Gateway CPU time per request, 64 in flight on one ``ModelStreamInfer``
   stream (answers in completion order, as the agent sends escalations)
   against the same load as unary calls.

Goals: 1 ≤ 1.10× bare, 2 ≤ 1.0× bare, 3 ≤ 0.6× unary.

    python bench/gateway_serving.py [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
from routing_overhead import (
    Server,
    _load,
    _start,
    requests_of,
    sequential_p50,
    serve_bare,
)

from edgecloud.core.v2_grpc import ORDER_KEY
from edgecloud.examples.digits import write_example
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc


def start_servers(files: Path) -> tuple[Server, Server]:
    bare = _start("bare", [sys.executable, __file__, "--serve-bare", str(files / "cloud.onnx"),
                           str(files / "bare.port")], files / "bare.port")
    gateway = _start("gateway", [
        sys.executable, "-m", "edgecloud", "gateway", "serve", "--listen", "127.0.0.1:0",
        "--data-dir", str(files / "gateway"), "--model", f"digits={files / 'cloud.onnx'}",
        "--port-file", str(files / "gateway.port"), "--log-level", "warning"],
        files / "gateway.port")
    return bare, gateway


async def _stream_load(address: str, requests: list, in_flight: int) -> None:
    """All ``requests`` on one stream, at most ``in_flight`` unanswered at a time."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        window = asyncio.Semaphore(in_flight)
        call = stub.ModelStreamInfer(metadata=((ORDER_KEY, "completion"),))

        async def write() -> None:
            for i, request in enumerate(requests):
                await window.acquire()
                request.id = str(i)
                await call.write(request)
            await call.done_writing()

        writer = asyncio.create_task(write())
        answered = 0
        while answered < len(requests):
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise RuntimeError("stream ended early")
            if reply.error_message:
                raise RuntimeError(reply.error_message)
            answered += 1
            window.release()
        await writer


def stream_vs_unary(gateway: Server, requests: list, in_flight: int,
                    rounds: int) -> list[float]:
    """Gateway CPU µs per request: unary calls, then one stream; rounds alternate."""
    loads = (_load, _stream_load)
    used = [0.0, 0.0]
    for load in loads:  # warm up
        asyncio.run(load(gateway.address, requests[:500], in_flight))
    for _ in range(rounds):
        for i, load in enumerate(loads):
            before = gateway.cpu_seconds
            asyncio.run(load(gateway.address, requests, in_flight))
            used[i] += gateway.cpu_seconds - before
    return [u / (len(requests) * rounds) * 1e6 for u in used]


def cpu_per_request(servers: tuple[Server, Server], requests: list, in_flight: int,
                    rounds: int) -> list[float]:
    """Server CPU µs per request with ``in_flight`` concurrent unary calls."""
    used = [0.0 for _ in servers]
    for server in servers:  # warm up
        asyncio.run(_load(server.address, requests[:500], in_flight))
    for _ in range(rounds):
        for i, server in enumerate(servers):
            before = server.cpu_seconds
            asyncio.run(_load(server.address, requests, in_flight))
            used[i] += server.cpu_seconds - before
    return [u / (len(requests) * rounds) * 1e6 for u in used]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per measure (3000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of the 64-in-flight loads (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        write_example(files)
        with np.load(files / "test.npz") as data:
            x = data["X"]
        single = requests_of(x, args.calls, 1)
        servers = start_servers(files)
        try:
            p50 = sequential_p50(servers, single)
            cpu = cpu_per_request(servers, single, 64, args.rounds)
            unary, stream = stream_vs_unary(servers[1], single, 64, args.rounds)
        finally:
            for server in servers:
                server.proc.terminate()
                server.proc.wait(10)
    rows = [("p50 µs, 1 row, 1 in flight", "bare", p50, 1.10),
            ("server CPU µs/request, 64 in flight", "bare", cpu, 1.0),
            ("gateway CPU µs/message, 64 in flight", "unary", [unary, stream], 0.6)]
    print("\ncloud gateway vs baselines, same model, same load generator")
    print(f"  {'measure':40} {'baseline':>14} {'gateway':>10} {'ratio':>7} {'goal':>7}")
    for label, what, (base, ours), goal in rows:
        ratio = ours / base
        mark = "ok" if ratio <= goal else "MISSED"
        print(f"  {label:40} {what:>5} {base:8.1f} {ours:10.1f} {ratio:7.2f} "
              f"{'≤' + str(goal):>7} {mark}")
    print("  (last row: the gateway on one stream, against the gateway on unary calls)")


if __name__ == "__main__":
    main()
