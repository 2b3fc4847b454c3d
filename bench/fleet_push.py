"""Pushing a model to the fleet: speed, agent memory, transfer rate.

Prints, in one run:

1. Time from the start of ``models publish`` of a ~50 MB edge model (signed
   manifest, upload through the gateway's admin service, registry write) to
   every one of N agents running it, for N = 1, 10 and 50 agents on
   loopback (agents in one process; each downloads, verifies, loads and
   smoke-tests its own copy).
2. Peak memory growth of one agent process (a separate ``edgecloud agent
   run``) while it downloads the model, and until it has swapped it in,
   against the model's size.
3. The gateway's FetchArtifact rate against a bare grpc.aio server that
   streams the same file in the same chunk size with plain reads.

Goals: all 50 agents within 10 s; memory growth during the download under
1.2x the model size; transfer at least 70% of the plain stream's rate.

    python bench/fleet_push.py [--agents 1 10 50] [--size-mb 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from edgecloud.cloud_gateway.app import GatewayApp
from edgecloud.cloud_gateway.grpc import fleet_servicer
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest
from edgecloud.core.logging import configure_logging
from edgecloud.edge_agent.app import AgentApp
from edgecloud.edge_agent.settings import AgentSettings
from edgecloud.examples.digits import write_example
from edgecloud.operations import GatewayOperator, RegistryOperator
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

CHUNK = fleet_servicer.CHUNK_BYTES


def big_model(path: Path, size_mb: float) -> Path:
    """An MLP with the digits signature whose weights take about ``size_mb`` MB."""
    hidden = int((size_mb * 2**20 / 4) / (64 + 10 + 1024)) or 1
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((64, hidden)) * 0.05)
                                 .astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 1024)) * 0.05)
                                 .astype(np.float32), "w2")
    w3 = numpy_helper.from_array((rng.standard_normal((1024, 10)) * 0.05)
                                 .astype(np.float32), "w3")
    nodes = [
        helper.make_node("MatMul", ["pixels", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=[w1, w2, w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def seed(registry: Path, files: Path) -> None:
    op = RegistryOperator(registry)
    m = build_model_manifest(files / "edge.onnx", name="digits", version="1", target="edge")
    op.publish_model(m.canonical(), b"", files / "edge.onnx", False)
    doc = (files / "policy.yaml").read_bytes()
    p = build_policy_manifest(doc, name="digits", version="1")
    op.publish_policy(p.canonical(), b"", doc)


def running(agent: AgentApp) -> str | None:
    try:
        return agent.service.task("digits").current.model.version
    except Exception:
        return None


async def wait_all(agents, version: str, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if all(running(a) == version for a in agents):
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not all agents reached version {version}")


async def push_time(work: Path, files: Path, model: Path, n: int) -> float:
    registry = work / f"registry-{n}"
    seed(registry, files)
    gateway = GatewayApp(GatewaySettings(listen="127.0.0.1:0", data_dir=work / f"gw-{n}",
                                         registry=registry, registry_poll_ms=50,
                                         log_level="warning"))
    await gateway.start()
    agents = []
    for i in range(n):
        agent = AgentApp(AgentSettings(listen="127.0.0.1:0", gateway=gateway.address,
                                       data_dir=work / f"agents-{n}" / str(i),
                                       agent_id=f"bench-{i}", status_interval_s=30,
                                       log_level="warning"))
        await agent.start()
        agents.append(agent)
    await wait_all(agents, "1", 60)
    op = GatewayOperator(gateway.address)
    start = time.monotonic()
    manifest = await asyncio.to_thread(build_model_manifest, model, name="digits",
                                       version="2", target="edge")
    await asyncio.to_thread(op.publish_model, manifest.canonical(), b"", model, True)
    done = await wait_all(agents, "2", 120)
    op.close()
    for agent in agents:
        await agent.stop(0.1)
    await gateway.stop(0.1)
    return done - start


async def agent_memory(work: Path, files: Path, model: Path) -> tuple[float, float, float]:
    registry = work / "registry-mem"
    seed(registry, files)
    gateway = GatewayApp(GatewaySettings(listen="127.0.0.1:0", data_dir=work / "gw-mem",
                                         registry=registry, registry_poll_ms=50,
                                         log_level="warning"))
    await gateway.start()
    data_dir = work / "agent-mem"
    # A benchmark: the short blocking start of the agent process is fine here.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "edgecloud", "agent", "run", "--gateway", gateway.address,
         "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--agent-id", "mem",
         "--log-format", "json", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ps = psutil.Process(proc.pid)
        state = data_dir / "store" / "state.json"
        while not state.exists():  # noqa: ASYNC110 (polling another process's file)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        baseline = ps.memory_info().rss
        manifest = await asyncio.to_thread(build_model_manifest, model, name="digits",
                                           version="2", target="edge")
        blob = data_dir / "store" / "blobs" / manifest.digest.removeprefix("sha256:")
        await asyncio.to_thread(RegistryOperator(registry).publish_model,
                                manifest.canonical(), b"", model, True)
        peak_download = peak_total = baseline
        deadline = time.monotonic() + 120
        downloaded = False
        while time.monotonic() < deadline:
            rss = ps.memory_info().rss
            peak_total = max(peak_total, rss)
            if not downloaded:
                peak_download = max(peak_download, rss)
                downloaded = blob.exists()
            elif '"version": "2"' in state.read_text():
                break
            await asyncio.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)
        await gateway.stop(0.1)
    return baseline, peak_download, peak_total


class PlainStream(pb_grpc.FleetServiceServicer):
    def __init__(self, path: Path) -> None:
        self.path = path

    async def FetchArtifact(self, request, context):
        with open(self.path, "rb") as f:  # noqa: ASYNC230 (the baseline reads inline)
            offset = 0
            while data := f.read(CHUNK):
                yield pb.Chunk(offset=offset, data=data)
                offset += len(data)


async def drain_stream(address: str, digest: str) -> float:
    async with grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 8 * 2**20)]) as channel:
        stub = pb_grpc.FleetServiceStub(channel)
        start = time.perf_counter()
        total = 0
        async for chunk in stub.FetchArtifact(pb.FetchRequest(digest=digest)):
            total += len(chunk.data)
        return total / (time.perf_counter() - start) / 2**20


async def transfer_rates(work: Path, files: Path, model: Path) -> tuple[float, float]:
    registry = work / "registry-rate"
    op = RegistryOperator(registry)
    manifest = build_model_manifest(model, name="digits", version="1", target="edge")
    op.publish_model(manifest.canonical(), b"", model, False)
    gateway = GatewayApp(GatewaySettings(listen="127.0.0.1:0", data_dir=work / "gw-rate",
                                         registry=registry, log_level="warning"))
    await gateway.start()
    plain = grpc.aio.server(options=[("grpc.max_send_message_length", 8 * 2**20)])
    pb_grpc.add_FleetServiceServicer_to_server(PlainStream(model), plain)
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()
    ours, base = [], []
    for _ in range(5):
        ours.append(await drain_stream(gateway.address, manifest.digest))
        base.append(await drain_stream(f"127.0.0.1:{port}", manifest.digest))
    await plain.stop(0)
    await gateway.stop(0.1)
    return float(np.median(ours)), float(np.median(base))


async def main_async(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = work / "digits"
        write_example(files)
        model = big_model(work / "big.onnx", args.size_mb)
        size = model.stat().st_size
        print(f"model: {size / 2**20:.1f} MiB ({model.name})")
        print("\n1. publish -> every agent running it")
        print(f"  {'agents':>8} {'seconds':>10}")
        for n in args.agents:
            seconds = await push_time(work, files, model, n)
            print(f"  {n:8d} {seconds:10.2f}")
        print("\n2. one agent process: memory growth against the model size")
        baseline, peak_dl, peak_all = await agent_memory(work, files, model)
        print(f"  baseline rss                  {baseline / 2**20:8.1f} MiB")
        print(f"  growth during download        {(peak_dl - baseline) / 2**20:8.1f} MiB "
              f"({(peak_dl - baseline) / size:.2f}x model)")
        print(f"  growth until swapped (loaded) {(peak_all - baseline) / 2**20:8.1f} MiB "
              f"({(peak_all - baseline) / size:.2f}x model)")
        print("\n3. transfer rate (median of 5)")
        ours, base = await transfer_rates(work, files, model)
        print(f"  plain grpc.aio file stream    {base:8.1f} MiB/s")
        print(f"  gateway FetchArtifact         {ours:8.1f} MiB/s  ({ours / base:.0%} of plain)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--size-mb", type=float, default=50.0)
    args = parser.parse_args()
    configure_logging("json", "error")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
