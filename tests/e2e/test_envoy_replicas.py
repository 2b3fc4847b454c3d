"""Gateway replicas behind a real Envoy, on one ``s3://`` registry, under load.

Two gateway processes share a SeaweedFS bucket; a real Envoy balances gRPC over
them (HTTP/2 upstreams, gRPC health checks, no route timeout for streams); an
agent reaches the fleet and the cloud only through Envoy, while an app streams
requests through the agent. One replica is SIGKILLed, then the other drained
with SIGTERM, each restarted.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from app_load import DEADLINE_S, App
from envoy_bin import envoy_binary
from fleet_helpers import publish_model, publish_policy, running_version, wait_until
from processes import Process
from s3_server import CREDENTIALS

from edgecloud.cloud_gateway.registry import Registry

TASK = "digits"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def envoy_config(listen: int, admin: int, replicas: list[int]) -> dict:
    """A plaintext loopback listener in front of the replicas, as deploy/envoy/envoy.yaml
    balances them (HTTP/2 upstreams, gRPC health checks, no timeout for long streams)."""
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "grpc", "codec_type": "AUTO", "stream_idle_timeout": "0s",
        "route_config": {"virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "gateways", "timeout": "0s"}}]}]},
        "http_filters": [router],
    }
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": port}}}} for port in replicas]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "grpc", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": manager}]}]}],
            "clusters": [{
                "name": "gateways", "type": "STATIC", "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "0.25s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                "health_checks": [{"timeout": "0.5s", "interval": "0.25s",
                                   "unhealthy_threshold": 1, "healthy_threshold": 1,
                                   "grpc_health_check": {}}],
                "load_assignment": {"cluster_name": "gateways",
                                    "endpoints": [{"lb_endpoints": endpoints}]},
            }],
        },
    }


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_replicas_behind_envoy_survive_a_kill_and_a_drain(
        s3_endpoint, bucket, monkeypatch, processes, start_agent, tmp_path, digits_dir,
        digits_test):
    """While an app streams through an agent that reaches two replicas only through Envoy,
    one replica is SIGKILLed and restarted and the other drained and restarted: no app
    request fails, a version published during the outage reaches the agent, and
    escalations flow again through the replicas afterwards."""
    binary = envoy_binary()
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    registry = f"s3://{bucket}/envoy-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="1", promote=True)

    a_port, b_port, listen, admin = _free_ports(4)

    def replica(name: str, port: int, round_: int) -> Process:
        process = Process(
            ["gateway", "serve", "--listen", f"127.0.0.1:{port}", "--registry", registry,
             "--data-dir", str(tmp_path / f"gateway-{name}"), "--replica", name,
             "--model", f"{TASK}={digits_dir / 'cloud.onnx'}"],
            tmp_path, f"replica-{name}-{round_}", env=env)
        processes.append(process)
        return process

    replicas = {"a": replica("a", a_port, 0), "b": replica("b", b_port, 0)}
    for process in replicas.values():
        await process.address()
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy_config(listen, admin, [a_port, b_port])))
    envoy = _start_envoy(binary, config, tmp_path / "envoy.log")
    try:
        await wait_until(lambda: _listening(listen) or envoy.poll() is not None,
                         timeout_s=30, what="envoy listening")
        assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()[-2000:]
        agent = await start_agent(f"127.0.0.1:{listen}", models={}, policies=[],
                                  agent_id="cam-1", status_interval_s=0.2,
                                  reconnect_max_s=0.5)
        await wait_until(lambda: running_version(agent) == "1", timeout_s=60,
                         what="version 1 through envoy")
        x, _ = digits_test
        app = App(agent.address, x)

        async def outages() -> None:
            await asyncio.sleep(1.0)
            assert await replicas["a"].stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx",
                                    "edge", version="2")
            await asyncio.to_thread(Registry(registry).set_rollout, "start", TASK,
                                    version="2", percent=100.0)
            await asyncio.sleep(1.0)
            replicas["a"] = replica("a", a_port, 1)
            await replicas["a"].address()
            await asyncio.sleep(1.0)
            assert await replicas["b"].stop(signal.SIGTERM) == 0
            await asyncio.sleep(0.5)
            replicas["b"] = replica("b", b_port, 1)
            await replicas["b"].address()

        await asyncio.gather(app.run(7.0), outages())
        assert app.failures == []
        assert app.p99() < DEADLINE_S
        await wait_until(lambda: running_version(agent) == "2", timeout_s=60,
                         what="the version published during the outage")
        after = App(agent.address, x, route="cloud")
        for _ in range(20):  # escalations resume once the breaker probes a healthy replica
            after.routes.clear()
            await after.run(0.5)
            if "cloud" in after.routes:
                break
        assert after.failures == []
        assert "cloud" in after.routes
    finally:
        envoy.send_signal(signal.SIGTERM)
        await asyncio.to_thread(envoy.wait, 30)


def _start_envoy(binary: Path, config: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [str(binary), "-c", str(config), "--base-id", str(random.randrange(1, 2**16)),
             "--disable-hot-restart", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
