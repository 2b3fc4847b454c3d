"""Routing overhead at the edge: is the router invisible?

Prints, side by side in one run:

1. Over gRPC: the agent answering confident rows locally (scoring and
   ``decide()`` included) against a bare grpc.aio v2 server that runs the
   same ONNX model without routing. Each server runs in its own process (as
   the agent does on a device); one client process makes sequential unary
   calls, alternating between the two servers; p50, p99 and ratio.
2. In process: ``OnnxModel.run`` + ``score_rows`` + ``decide()`` (with the
   run-time signals) against a bare ``InferenceSession.run``.

Goal: ratio of p50 at most 1.10. The 64-row run shows how the fixed per-request
cost amortises over rows.

    python bench/routing_overhead.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from edgecloud.core import codec
from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import InferRequest
from edgecloud.examples.digits import write_example
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecloud.router import RequestContext, RouterState, decide, parse_policy, score_rows


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


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e6


def time_calls(stub, requests: list[pb.ModelInferRequest]) -> list[float]:
    out = []
    for request in requests:
        start = time.perf_counter()
        stub.ModelInfer(request, timeout=5)
        out.append(time.perf_counter() - start)
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


def _start(args: list[str], port_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server {args[:4]} did not start")
        time.sleep(0.05)
    return proc, port_file.read_text().strip()


def grpc_comparison(files: Path, calls: int, rows: np.ndarray, per_call: int = 1) -> None:
    """Each server in its own process, the client in this one, calls alternating."""
    bare, bare_address = _start(
        [sys.executable, __file__, "--serve-bare", str(files / "edge.onnx"),
         str(files / "bare.port")], files / "bare.port")
    agent, agent_address = _start(
        [sys.executable, "-m", "edgecloud", "agent", "run", "--listen", "127.0.0.1:0",
         "--data-dir", str(files / "agent"), "--model", f"digits={files / 'edge.onnx'}",
         "--policy", str(files / "policy.yaml"), "--port-file", str(files / "agent.port"),
         "--log-level", "warning"], files / "agent.port")
    try:
        def batch(i: int) -> np.ndarray:
            index = (np.arange(per_call) + i * per_call) % len(rows)
            return rows[index]

        requests = [
            codec.encode_infer_request(InferRequest(model_name="digits",
                                                    inputs={"pixels": batch(i)}))
            for i in range(calls)
        ]
        bare_times: list[float] = []
        agent_times: list[float] = []
        with grpc.insecure_channel(bare_address) as c1, grpc.insecure_channel(agent_address) as c2:
            s1 = pb_grpc.GRPCInferenceServiceStub(c1)
            s2 = pb_grpc.GRPCInferenceServiceStub(c2)
            time_calls(s1, requests[:300])  # warm up both
            time_calls(s2, requests[:300])
            # Alternate call by call so both servers see the same machine noise.
            for request in requests:
                bare_times += time_calls(s1, [request])
                agent_times += time_calls(s2, [request])
    finally:
        for proc in (bare, agent):
            proc.terminate()
            proc.wait(10)
        for name in ("bare.port", "agent.port"):
            (files / name).unlink(missing_ok=True)
    report(f"gRPC unary, {per_call} row(s) per call, confident (answered at the edge)",
           "bare v2 server", bare_times, "edgecloud agent", agent_times)


def in_process(files: Path, calls: int, rows: np.ndarray) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(files / "edge.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    model = OnnxModel.load(files / "edge.onnx", name="digits")
    policy = parse_policy((files / "policy.yaml").read_text())
    state = RouterState.from_policy(policy, clock=time.monotonic, rng=np.random.default_rng(0))
    ctx = RequestContext(time_left_s=0.25)
    bare_times, routed_times = [], []
    for i in range(calls):
        x = rows[i % len(rows)][None]
        start = time.perf_counter()
        session.run(None, {"pixels": x})
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        outputs = model.run({"pixels": x})
        confidence, predicted = score_rows(policy, outputs["probabilities"])
        decisions = decide(policy, confidence, predicted, ctx, state.signals(1))
        state.observe_decisions(decisions)
        routed_times.append(time.perf_counter() - start)
    report("in process, 1 row", "InferenceSession.run", bare_times,
           "model.run + score_rows + decide", routed_times)


def report(title: str, base_name: str, base: list[float], name: str, ours: list[float]) -> None:
    print(f"\n{title} ({len(base)} calls each)")
    print(f"  {'':34} {'p50 µs':>10} {'p99 µs':>10} {'mean µs':>10}")
    for label, values in ((base_name, base), (name, ours)):
        print(f"  {label:34} {pct(values, 50):10.1f} {pct(values, 99):10.1f} "
              f"{statistics.fmean(values) * 1e6:10.1f}")
    print(f"  {'ratio (ours / baseline)':34} {pct(ours, 50) / pct(base, 50):10.2f} "
          f"{pct(ours, 99) / pct(base, 99):10.2f} "
          f"{statistics.fmean(ours) / statistics.fmean(base):10.2f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        write_example(files)
        with np.load(files / "test.npz") as data:
            x = data["X"]
        policy = parse_policy((files / "policy.yaml").read_text())
        model = OnnxModel.load(files / "edge.onnx", name="digits")
        confidence, _ = score_rows(policy, model.run({"pixels": x})["probabilities"])
        confident = x[confidence >= policy.threshold]
        grpc_comparison(files, args.calls, confident)
        grpc_comparison(files, args.calls // 3, confident, per_call=64)
        in_process(files, args.calls * 5, confident)


if __name__ == "__main__":
    main()
