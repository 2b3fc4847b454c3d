"""Hard examples survive crashes: SIGKILL of the agent or the gateway mid-upload, SIGTERM.

Agents and gateways that get killed run as processes (`python -m edgecloud ...`); the
other side runs in the test. Each test ends by counting: the records on the gateway are
exactly the records the agent's ledger kept, sequence numbers 1..N, each once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from fleet_helpers import wait_until
from processes import (
    HARD_REASONS,
    QUICK_LEDGER,
    Process,
    ledger_counters,
    stored_count,
    stored_seqs,
)

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc


def agent_args(folder: Path, gateway: str, digits_dir: Path, **ledger) -> list[str]:
    config = folder / "agent.yaml"
    config.write_text(yaml.safe_dump({"hard_examples": ledger, "reconnect_max_s": 1.0}))
    return ["agent", "run", "--gateway", gateway, "--listen", "127.0.0.1:0",
            "--data-dir", str(folder / "agent"), "--agent-id", "cam-1",
            "--model", f"digits={digits_dir / 'edge.onnx'}",
            "--policy", str(digits_dir / "policy.yaml"), "--status-interval", "3600",
            "--config", str(config)]


async def send_until_stopped(address: str, x: np.ndarray) -> int:
    """Send the rows in requests of 40 until the agent stops answering; returns how many
    rows the agent said it marked hard."""
    hard = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        while True:
            for start in range(0, len(x), 40):
                request = codec.encode_infer_request(InferRequest(
                    model_name="digits", inputs={"pixels": x[start:start + 40]}))
                try:
                    reply = codec.decode_infer_response(await stub.ModelInfer(request,
                                                                              timeout=5))
                except grpc.aio.AioRpcError:
                    return hard
                reasons = str(reply.parameters["reason"]).split(",")
                hard += sum(reason in HARD_REASONS for reason in reasons)


def assert_exactly_once(registry: Path, kept: int) -> None:
    seqs = stored_seqs(registry)
    assert kept > 0
    assert sorted(seqs) == list(range(1, kept + 1)), "missing or duplicated records"


@pytest.mark.e2e
async def test_agent_killed_mid_upload_loses_and_repeats_nothing(start_gateway, processes,
                                                                 tmp_path, digits_dir,
                                                                 digits_test):
    """An agent SIGKILLed three times while uploading comes back, sends what its ledger
    kept, and the gateway ends with every kept record exactly once."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    x, _ = digits_test
    args = agent_args(tmp_path, gateway.address, digits_dir, **QUICK_LEDGER)
    for round_ in range(3):
        agent = Process(args, tmp_path, f"agent-{round_}")
        processes.append(agent)
        client = asyncio.create_task(send_until_stopped(await agent.address(), x))
        before = stored_count(registry)
        await wait_until(lambda before=before: stored_count(registry) >= before + 10,
                         what="uploads under way")
        assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
        await client
    final = Process(args, tmp_path, "agent-final")
    processes.append(final)
    await final.address()
    await wait_until(lambda: ledger_counters(tmp_path).get("queued", 1) == 0,
                     what="the ledger's queue to empty")
    assert await final.stop(signal.SIGTERM) == 0
    counters = ledger_counters(tmp_path)
    assert not any(counters.get(k) for k in ("evicted_age", "evicted_space", "quarantined"))
    assert counters["uploaded"] == counters["kept"]
    assert_exactly_once(registry, counters["kept"])


@pytest.mark.e2e
async def test_gateway_killed_mid_upload_loses_and_repeats_nothing(start_agent, processes,
                                                                   tmp_path, digits_dir,
                                                                   digits_test):
    """A gateway SIGKILLed three times while an agent uploads (and keeps answering, at the
    edge while the cloud is gone) ends, once restarted, with every record the agent kept
    exactly once."""
    registry = tmp_path / "registry"
    gateway_args = ["gateway", "serve", "--registry", str(registry),
                    "--data-dir", str(tmp_path / "gateway"),
                    "--model", f"digits={digits_dir / 'cloud.onnx'}"]
    gateway = Process([*gateway_args, "--listen", "127.0.0.1:0"], tmp_path, "gateway-0")
    processes.append(gateway)
    address = await gateway.address()
    agent = await start_agent(address, status_interval_s=3600, reconnect_max_s=1.0,
                              hard_examples=QUICK_LEDGER)
    x, _ = digits_test

    async def one_pass() -> None:
        for start in range(0, len(x), 40):
            await agent.service.answer(InferRequest(
                model_name="digits", inputs={"pixels": x[start:start + 40]}), 0.5)

    for round_ in range(3):
        before = stored_count(registry)
        await one_pass()
        await wait_until(lambda before=before: stored_count(registry) >= before + 10,
                         what="uploads under way")
        assert await gateway.stop(signal.SIGKILL) == -signal.SIGKILL
        await one_pass()  # answered at the edge meanwhile: hard rows kept all the same
        gateway = Process([*gateway_args, "--listen", address], tmp_path,
                          f"gateway-{round_ + 1}")
        processes.append(gateway)
        await gateway.address()
    await agent.ledger.flush_async()
    await wait_until(lambda: agent.ledger.stats.queued == 0, timeout_s=60,
                     what="the ledger's queue to empty")
    stats = agent.ledger.stats
    assert (stats.evicted_age, stats.evicted_space, stats.quarantined, stats.dropped) == (
        0, 0, 0, 0)
    assert stats.uploaded == stats.kept
    assert_exactly_once(registry, stats.kept)


@pytest.mark.e2e
async def test_sigterm_writes_buffered_rows_to_the_ledger(start_gateway, processes, tmp_path,
                                                          digits_dir, digits_test):
    """Rows still in memory when an agent gets SIGTERM (its flush a minute away, no upload
    due) are in its ledger once it has exited."""
    gateway = await start_gateway(registry=tmp_path / "registry")
    agent = Process(agent_args(tmp_path, gateway.address, digits_dir, flush_interval_s=60,
                               upload_interval_s=3600), tmp_path, "agent")
    processes.append(agent)
    address = await agent.address()
    x, _ = digits_test
    hard = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for start in range(0, len(x), 40):
            reply = codec.decode_infer_response(await stub.ModelInfer(
                codec.encode_infer_request(InferRequest(
                    model_name="digits", inputs={"pixels": x[start:start + 40]})), timeout=5))
            hard += sum(r in HARD_REASONS for r in str(reply.parameters["reason"]).split(","))
    assert hard
    assert await agent.stop(signal.SIGTERM) == 0
    counters = ledger_counters(tmp_path)
    assert (counters["kept"], counters["queued"]) == (hard, hard)
