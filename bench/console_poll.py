"""What an open console costs the gateway: one poll of each page, against ``fleet status``.

Prints, for a registry holding the reports of N agents (N = 10, 100, 1000 by
default), the median and 95th percentile time of each console call
(``GET /console/api/PAGE`` on the gateway's HTTP port) over R calls, next to
the admin service's ``FleetStatus`` over gRPC (what ``edgecloud fleet status``
calls), measured in the same run against the same gateway. The registry also
holds two edge versions in a rollout, a cloud version, the bundled policy and
20 hard examples from each of 10 agents. The page polls one call every 1.5 s.

    python bench/console_poll.py [--agents 10 100 1000] [--calls 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc

from edgecloud.cloud_gateway.app import GatewayApp
from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample
from edgecloud.core.logging import configure_logging
from edgecloud.examples.digits import load_split, write_example
from edgecloud.operations import RegistryOperator
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

PAGES = ("agents", "rollouts", "models", "policies", "examples")


def seed(registry: Path, digits: Path) -> None:
    """Edge versions 1 and 2 (2 rolled out to half), cloud 1, the policy, hard examples."""
    op = RegistryOperator(registry)
    for target, version in (("edge", "1"), ("cloud", "1"), ("edge", "2")):
        path = digits / f"{target}.onnx"
        manifest = build_model_manifest(path, name="digits", version=version, target=target)
        op.publish_model(manifest.canonical(), b"", path, False)
    document = (digits / "policy.yaml").read_bytes()
    op.publish_policy(build_policy_manifest(document, name="digits", version="1").canonical(),
                      b"", document)
    op.rollout("start", "digits", version="2", percent=50.0)
    x, _ = load_split("test")
    store = HardExampleStore(registry / "hard_examples")
    for a in range(10):
        agent = f"agent-{a:04d}"
        store.store(agent, [KeptExample.new(agent, i + 1, HardExample(
            task="digits", model_version="1", policy_version="1",
            inputs=(InputRow.of("pixels", x[i:i + 1]),), edge_scores=(0.5,) * 10,
            cloud_scores=(0.1,) * 10, cloud_model_version="1", route="cloud",
            reason="low_confidence", confidence=0.4, at=1e9 + i)) for i in range(20)])


def add_agents(registry: Path, start: int, stop: int) -> None:
    """Reports of agents ``start`` to ``stop - 1``, as ReportStatus stores them."""
    reg = Registry(registry)
    now = time.time()
    for a in range(start, stop):
        agent = f"agent-{a:04d}"
        reg.write_agent_status(agent, {
            "agent_id": agent, "labels": {"site": f"site-{a % 7}", "hw": "x86"},
            "agent_version": "0.1.0", "replica": "bench", "last_seen": now,
            "status_interval_s": 10.0, "applied_generation": "7",
            "tasks": [{"name": "digits", "model_version": "1" if a % 2 else "2",
                       "policy_version": "1", "requests": "1000", "rows": "1000",
                       "escalated_rows": "120", "fallback_rows": "3", "drift_status": "stable",
                       "drift_psi": 0.03}],
            "diagnostics": [{"name": "digits", "fallback_rows_by_reason": {"unavailable": "3"},
                             "drift_rows": "500", "drift_min_rows": "50"}],
            "last_swap": {"name": "digits", "version": "1", "kind": "model", "ok": True,
                          "at": now},
            "swap_history": [{"name": "digits", "version": "1", "kind": "model", "ok": True,
                              "at": now}]})


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:8.2f} {p95 * 1000:8.2f}"


async def measure(gateway: GatewayApp, calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(
            gateway.address) as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        for name in ("FleetStatus (gRPC)", *PAGES):
            spent = times.setdefault(name, [])
            for _ in range(calls):
                began = time.perf_counter()
                if name in PAGES:
                    async with session.get(f"http://{gateway.http_address}/console/api/{name}"
                                           ) as response:
                        assert response.status == 200, await response.text()
                        await response.read()
                else:
                    await stub.FleetStatus(pb.FleetStatusRequest(), timeout=30)
                spent.append(time.perf_counter() - began)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    configure_logging("json", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = root / "digits"
        write_example(digits)
        registry = root / "registry"
        seed(registry, digits)
        gateway = GatewayApp(GatewaySettings(listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                                             data_dir=root / "gw", registry=registry,
                                             models={}, drain_grace_s=0.5))
        await gateway.start()
        try:
            print(f"{'agents':>6}  {'call':<20} {'median ms':>9} {'p95 ms':>8}")
            have = 0
            for n in sorted(args.agents):
                await asyncio.to_thread(add_agents, registry, have, n)
                have = n
                for name, spent in (await measure(gateway, args.calls)).items():
                    print(f"{n:>6}  {name:<20} {summary(spent)}")
        finally:
            await gateway.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
