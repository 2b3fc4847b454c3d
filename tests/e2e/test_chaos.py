"""Chaos on loopback: the cloud dies, the network stalls, the ledger's disk fills.

An app streams requests through a real agent process the whole time; what it
must never see is a failed request or an answer later than its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from app_load import DEADLINE_S, App
from fleet_helpers import wait_until
from processes import Process, ledger_counters
from stalling_proxy import StallingProxy

from edgecloud.cloud_gateway.registry import Registry


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _agent_args(folder: Path, gateway: str, digits_dir: Path, **settings) -> list[str]:
    config = folder / "agent.yaml"
    config.write_text(yaml.safe_dump({"reconnect_max_s": 1.0, **settings}))
    return ["agent", "run", "--gateway", gateway, "--listen", "127.0.0.1:0",
            "--data-dir", str(folder / "agent"), "--agent-id", "cam-1",
            "--model", f"digits={digits_dir / 'edge.onnx'}",
            "--policy", str(digits_dir / "policy.yaml"), "--config", str(config)]


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_gateway_killed_three_times_under_load(processes, tmp_path, digits_dir,
                                                     digits_test):
    """While an app sends 100 requests a second through an agent, the gateway is SIGKILLed
    and restarted three times: no app request fails, p99 stays within the deadline, and
    every hard example kept before, during and after the outages is exported once."""
    registry = tmp_path / "registry"
    address = _free_address()
    gateway_args = ["gateway", "serve", "--listen", address, "--registry", str(registry),
                    "--data-dir", str(tmp_path / "gateway"),
                    "--model", f"digits={digits_dir / 'cloud.onnx'}"]
    gateway = Process(gateway_args, tmp_path, "gateway-0")
    processes.append(gateway)
    await gateway.address()
    agent = Process(_agent_args(tmp_path, address, digits_dir, hard_examples={
        "flush_interval_s": 0.1, "upload_interval_s": 0.1}), tmp_path, "agent")
    processes.append(agent)
    x, _ = digits_test
    app = App(await agent.address(), x)

    async def outages() -> None:
        nonlocal gateway
        for round_ in range(3):
            await asyncio.sleep(1.0)
            assert await gateway.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.sleep(0.5)
            gateway = Process(gateway_args, tmp_path, f"gateway-{round_ + 1}")
            processes.append(gateway)
            await gateway.address()

    await asyncio.gather(app.run(6.0), outages())
    assert app.failures == []
    assert app.p99() < DEADLINE_S
    assert "cloud" in app.routes and "edge_fallback" in app.routes
    await wait_until(lambda: (c := ledger_counters(tmp_path)).get("queued", 1) == 0
                     and c.get("kept", 0) > 0, timeout_s=60, what="every kept record sent")
    assert await agent.stop(signal.SIGTERM) == 0
    counters = ledger_counters(tmp_path)
    out = tmp_path / "export"
    export = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "edgecloud", "examples", "export", "--registry", str(registry),
        "--task", "digits", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    ids = [json.loads(line)["record_id"] for line in
           (out / "index.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == counters["kept"] == counters["uploaded"]
    with np.load(out / "examples.npz") as data:
        assert data["pixels"].shape == (counters["kept"], 64)


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_stalled_network_keeps_answers_within_the_deadline(start_gateway, processes,
                                                                 tmp_path, digits_dir,
                                                                 digits_test):
    """With the link to the gateway stalled (no bytes, no close) while the app asks for
    the cloud on every request, every request is answered, within its deadline."""
    gateway = await start_gateway()
    proxy = StallingProxy(gateway.address)
    try:
        agent = Process(_agent_args(tmp_path, await proxy.start(), digits_dir), tmp_path,
                        "agent")
        processes.append(agent)
        x, _ = digits_test
        app = App(await agent.address(), x, route="cloud")
        await app.run(1.0)  # the link works
        assert set(app.routes) == {"cloud"}

        async def stall() -> None:
            await asyncio.sleep(0.5)
            proxy.flowing.clear()
            await asyncio.sleep(2.0)
            proxy.flowing.set()

        await asyncio.gather(app.run(4.0), stall())
        assert app.failures == []
        assert app.p99() < DEADLINE_S
        assert "edge_fallback" in app.routes
    finally:
        await proxy.close()


def _small_files(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_ledger_disk_full_keeps_serving_and_counts_drops(start_gateway, processes,
                                                               tmp_path, digits_dir,
                                                               digits_test):
    """An agent whose files may not grow past a few kilobytes (its ledger's disk is full)
    answers every request and reports the hard rows it could not keep as dropped."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = Process(
        _agent_args(tmp_path, gateway.address, digits_dir, status_interval_s=0.2,
                    upload_hard_examples=True,
                    hard_examples={"flush_interval_s": 0.1, "upload_interval_s": 3600,
                                   "max_buffered_bytes": 64 * 1024}),
        tmp_path, "agent", preexec_fn=_small_files(48 * 1024))
    processes.append(agent)
    x, _ = digits_test
    app = App(await agent.address(), x, confidence_threshold=1.0)  # every row is hard
    await app.run(3.0)
    assert app.failures == []

    def dropped() -> int:
        status = Registry(registry).agent_status("cam-1") or {}
        return int((status.get("hard_examples") or {}).get("dropped", 0) or 0)

    await wait_until(lambda: dropped() > 0, timeout_s=30, what="dropped rows reported")
    assert agent.proc.poll() is None
    log = (tmp_path / "agent.log").read_text()
    # Logged once per failing spell (the disk may free a little and fill again), not once
    # per flush (every 0.1 s here).
    assert 1 <= log.count('"hard_examples_write_failed"') <= 3
    with contextlib.suppress(ProcessLookupError):
        agent.proc.send_signal(signal.SIGTERM)
