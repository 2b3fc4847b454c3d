"""Gateway throughput on a heavy model: the cloud gateway against bare ONNX Runtime.

The model is a small convolutional network built here with ``onnx.helper``
(random weights from a seeded generator): input ``[N, 3, 64, 64]``, four
64-channel 3×3 convolutions each followed by ReLU, a global average pool and a
Gemm to 10 classes, about a millisecond of CPU per row. In ONE run, so that
every figure sees the same machine noise:

1. Bare ONNX Runtime in this process: rows/s at batch 1 and batch 32 with 1
   and 2 intra-op threads (the best of these is the baseline).
2. The real gateway, started as its own process as ``gateway_serving.py``
   starts it, driven by that benchmark's load generator (pre-encoded
   single-row requests, 64 in flight, grpc.aio): as unary calls, and as
   messages on one ``ModelStreamInfer`` stream (as agents escalate): rows/s,
   and the ratio to the best bare configuration of the same round.

Rounds alternate bare and gateway. The load generator runs on the same cores
as the gateway, so the goal, ≥ 0.80× the best bare configuration, is close to
the machine's limit.

``--providers CUDAExecutionProvider`` measures the same on a GPU: bare ONNX
Runtime on CUDA against the gateway started with that provider. It needs the
``onnxruntime-gpu`` build and a CUDA device; without them it says so and exits 0.

    python bench/heavy_model.py [--requests 2000] [--rounds 3] [--providers P]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from gateway_serving import _stream_load
from onnx import TensorProto, helper, numpy_helper
from routing_overhead import Server, _load, _start, requests_of

from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

MODEL = "heavy"
INPUT = "images"
OUTPUT = "logits"
IN_FLIGHT = 64
GOAL = 0.80
CPU = "CPUExecutionProvider"
STRIDES = (2, 1, 1, 1)
"""Stride of each convolution: the first halves the image, the rest keep it."""


def build_model(path: Path, *, seed: int = 0, channels: int = 64,
                strides: tuple[int, ...] = STRIDES, size: int = 64, classes: int = 10) -> None:
    """Write the heavy model to ``path``: one 3×3 conv+ReLU per stride, global pool, Gemm."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous, width = INPUT, 3
    for i, stride in enumerate(strides):
        fan_in = width * 9
        w = rng.normal(0, np.sqrt(2.0 / fan_in), (channels, width, 3, 3)).astype(np.float32)
        b = np.zeros(channels, np.float32)
        weights += [numpy_helper.from_array(w, f"conv{i}.w"),
                    numpy_helper.from_array(b, f"conv{i}.b")]
        nodes += [helper.make_node("Conv", [previous, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        previous, width = f"r{i}", channels
    w = rng.normal(0, np.sqrt(1.0 / channels), (classes, channels)).astype(np.float32)
    weights += [numpy_helper.from_array(w, "fc.w"),
                numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], [OUTPUT], transB=1)]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", classes])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def bare_session(path: Path, threads: int, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers)


@dataclass(frozen=True)
class Measure:
    rows_per_s: float
    cpu_us_per_row: float
    """CPU of the process that ran the model (bare: this one; else the gateway's)."""
    client_us_per_row: float = 0.0
    """CPU of the load generator (this process) while it drove the gateway."""


def bare_rows_per_s(session: ort.InferenceSession, x: np.ndarray, batch: int,
                    rows: int) -> Measure:
    """Rows/s (and CPU per row) of ``session`` running ``rows`` rows in runs of ``batch``."""
    feed = {INPUT: np.ascontiguousarray(x[:batch])}
    session.run(None, feed)  # warm up (first run allocates)
    runs = max(rows // batch, 1)
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    return Measure(runs * batch / elapsed, used / (runs * batch) * 1e6)


def gateway_rows_per_s(server: Server, requests: list, load: Callable) -> Measure:
    """Rows/s of the gateway answering single-row ``requests``, IN_FLIGHT at a time, with
    the CPU per row of the gateway and of the load generator."""
    served, cpu, start = server.cpu_seconds, time.process_time(), time.perf_counter()
    asyncio.run(load(server.address, requests, IN_FLIGHT))
    elapsed = time.perf_counter() - start
    return Measure(len(requests) / elapsed,
                   (server.cpu_seconds - served) / len(requests) * 1e6,
                   (time.process_time() - cpu) / len(requests) * 1e6)


def start_gateway(files: Path, providers: list[str]) -> Server:
    args = [sys.executable, "-m", "edgecloud", "gateway", "serve", "--listen", "127.0.0.1:0",
            "--data-dir", str(files / "gateway"), "--model", f"{MODEL}={files / 'heavy.onnx'}",
            "--port-file", str(files / "gateway.port"), "--log-level", "warning"]
    if providers != [CPU]:
        args += ["--providers", ",".join(providers)]
    return _start("gateway", args, files / "gateway.port")


def gateway_provider(server: Server) -> str:
    """The execution provider the gateway says the model runs on (ModelConfig)."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelConfig(pb.ModelConfigRequest(name=MODEL), timeout=10)
    return reply.config.parameters["execution_provider"].string_value


def cuda_missing(providers: list[str]) -> str | None:
    """Why the providers asked for cannot run here, or None when they can."""
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if not missing:
        return None
    return (f"{', '.join(missing)} is not available: this ONNX Runtime "
            f"({ort.__version__}, {ort.get_device()}) offers {', '.join(available)}. "
            "Install onnxruntime-gpu on a machine with a CUDA GPU to measure it.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="single-row requests per gateway measure (2000)")
    parser.add_argument("--rows", type=int, default=1280,
                        help="rows per bare measure and configuration (1280)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of bare and gateway (3)")
    parser.add_argument("--providers", default=CPU, metavar="P1,P2",
                        help="execution providers of both bare and gateway, e.g. "
                        "CUDAExecutionProvider (default: CPU)")
    args = parser.parse_args()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    why = cuda_missing(providers)
    if why is not None:
        print(f"heavy model bench skipped: {why}")
        return 0
    if CPU not in providers:
        providers.append(CPU)
    configs = [(batch, threads) for threads in (1, 2) for batch in (1, 32)]
    loads = {"unary calls": _load, "one stream": _stream_load}
    bare: dict[tuple[int, int], list[Measure]] = {config: [] for config in configs}
    served: dict[str, list[Measure]] = {name: [] for name in loads}
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        build_model(files / "heavy.onnx")
        x = np.random.default_rng(1).standard_normal((64, 3, 64, 64), dtype=np.float32)
        requests = requests_of(x, args.requests, 1, model=MODEL, input_name=INPUT)
        sessions = {threads: bare_session(files / "heavy.onnx", threads, providers)
                    for threads in (1, 2)}
        on = sessions[1].get_providers()[0]
        gateway = start_gateway(files, providers)
        try:
            served_on = gateway_provider(gateway)
            if served_on != on:
                print(f"heavy model bench stopped: the gateway runs the model on {served_on}, "
                      f"bare ONNX Runtime on {on}")
                return 1
            for load in loads.values():  # warm up
                asyncio.run(load(gateway.address, requests[:200], IN_FLIGHT))
            for _ in range(args.rounds):
                for batch, threads in configs:
                    bare[batch, threads].append(
                        bare_rows_per_s(sessions[threads], x, batch, args.rows))
                for name, load in loads.items():
                    served[name].append(gateway_rows_per_s(gateway, requests, load))
        finally:
            gateway.proc.terminate()
            gateway.proc.wait(10)
    # Each round's gateway figure against the best bare configuration of the same round.
    best = [max(bare[c][i].rows_per_s for c in configs) for i in range(args.rounds)]
    best_config = max(configs, key=lambda c: float(np.median([m.rows_per_s for m in bare[c]])))
    print(f"\nheavy model on {on}: rows/s, median of {args.rounds} alternating rounds "
          "[range]; ratio: to the best bare configuration of the same round; CPU µs per row "
          "of the process running the model, and of the load generator")
    print(f"  {'configuration':58} {'rows/s':>7} {'range':>13} {'ratio':>6} {'CPU':>6} "
          f"{'load':>5}")

    def row(label: str, runs: list[Measure], goal: str = "") -> None:
        rates = [m.rows_per_s for m in runs]
        ratio = float(np.median([r / b for r, b in zip(rates, best, strict=True)]))
        span = f"[{min(rates):.0f}–{max(rates):.0f}]"
        client = float(np.median([m.client_us_per_row for m in runs]))
        print(f"  {label:58} {np.median(rates):7.0f} {span:>13} {ratio:6.2f} "
              f"{np.median([m.cpu_us_per_row for m in runs]):6.0f} "
              f"{f'{client:5.0f}' if client else '':>5}"
              + (f"  goal ≥ {GOAL:.2f} {'ok' if ratio >= GOAL else 'MISSED'}" if goal else ""))

    for batch, threads in configs:
        row(f"bare ONNX Runtime, batch {batch}, {threads} thread{'s' * (threads > 1)}",
            bare[batch, threads])
    for name in loads:
        row(f"gateway, 1 row per request, {IN_FLIGHT} in flight, {name}", served[name],
            goal="yes")
    print(f"  (best bare, most often: batch {best_config[0]}, {best_config[1]} thread(s); the "
          "load generator shares the gateway's cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
