"""Hard examples flow from agents back to the gateway, once each, for relabelling."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from fleet_helpers import digits_like_model, wait_until

from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import Overloaded, Unavailable
from edgecloud.core.hard_example_codec import example_to_pb
from edgecloud.core.tensors import InferRequest
from edgecloud.edge_agent.service import hard_rows
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc
from edgecloud.router import dump_policy, parse_policy


def stored(registry: Path, task: str = "digits") -> list:
    """Every record the gateway keeps for ``task``."""
    return list(HardExampleStore(registry / "hard_examples").records(task))


async def answer_rows(agent, x: np.ndarray, task: str = "digits") -> int:
    """Answer ``x`` through the agent; returns how many rows it marked hard."""
    answer = await agent.service.answer(InferRequest(model_name=task, inputs={"pixels": x}),
                                        5.0)
    rows = hard_rows(answer.routing.reason)
    return 0 if rows is None else len(rows)


@pytest.mark.e2e
async def test_hard_rows_arrive_once_with_both_answers(start_gateway, start_agent, tmp_path,
                                                       digits_test, onnx_reference):
    """Rows escalated for low confidence are kept, uploaded, acknowledged and stored once
    under stable ids with their inputs, both models' scores and the versions; the ledger's
    queue empties and its counters say so."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = await start_agent(gateway.address, status_interval_s=3600)
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(model_name="digits",
                                                     inputs={"pixels": x[:120]}), 5.0)
    hard = [i for i, route in enumerate(answer.routing.routes()) if route.value == "cloud"]
    assert hard
    assert await agent.uploader.upload() == len(hard)
    records = stored(registry)
    assert [r.seq for r in records] == list(range(1, len(hard) + 1))
    assert len({r.record_id for r in records}) == len(hard)
    edge = onnx_reference("edge", x[:120])
    cloud = onnx_reference("cloud", x[:120])
    for i, record in zip(hard, records, strict=True):
        example = record.example
        np.testing.assert_array_equal(example.inputs[0].array(), x[i:i + 1])
        np.testing.assert_allclose(example.edge_scores, edge[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(example.cloud_scores, cloud[i], rtol=1e-5, atol=1e-6)
        assert record.agent_id == agent.settings.agent_id
        assert (example.reason, example.route) == ("low_confidence", "cloud")
        assert (example.model_version, example.policy_version,
                example.cloud_model_version) == ("1", "1", "1")
    stats = agent.ledger.stats
    assert (stats.kept, stats.uploaded, stats.queued) == (len(hard), len(hard), 0)
    assert await agent.uploader.upload() == 0


@pytest.mark.e2e
async def test_one_row_requests_keep_their_row(start_gateway, start_agent, tmp_path,
                                               digits_test, onnx_reference):
    """Hard rows of one-row requests (the usual device call) are kept with their own
    input, the edge's scores and the cloud's, like rows of larger requests."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = await start_agent(gateway.address, status_interval_s=3600)
    x, _ = digits_test
    hard = [i for i in range(60) if await answer_rows(agent, x[i:i + 1])]
    assert hard
    assert await agent.uploader.upload() == len(hard)
    edge, cloud = onnx_reference("edge", x[:60]), onnx_reference("cloud", x[:60])
    for i, record in zip(hard, sorted(stored(registry), key=lambda r: r.seq), strict=True):
        np.testing.assert_array_equal(record.example.inputs[0].array(), x[i:i + 1])
        np.testing.assert_allclose(record.example.edge_scores, edge[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(record.example.cloud_scores, cloud[i], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.e2e
async def test_failed_upload_keeps_the_batch(start_gateway, start_agent, tmp_path,
                                             digits_test):
    """With the gateway gone the records stay in the ledger and go up once it is back."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    address = gateway.address
    agent = await start_agent(address, status_interval_s=3600)
    x, _ = digits_test
    hard = await answer_rows(agent, x[:120])
    await gateway.stop(0.1)
    with pytest.raises(Unavailable):
        await agent.uploader.upload()
    assert agent.ledger.stats.queued == hard
    await start_gateway(listen=address, registry=registry)
    sent = 0
    for _ in range(50):
        try:
            sent = await agent.uploader.upload()
            break
        except Unavailable:
            await asyncio.sleep(0.1)
    assert sent == hard
    assert len(stored(registry)) == hard


@pytest.mark.e2e
async def test_a_resent_batch_is_stored_once(start_gateway, start_agent, tmp_path,
                                             digits_test):
    """A batch sent again (its acknowledgement lost) is acknowledged as duplicates and the
    gateway still holds each record once."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = await start_agent(gateway.address, status_interval_s=3600)
    x, _ = digits_test
    hard = await answer_rows(agent, x[:120])
    agent.ledger.flush()
    batch = agent.ledger.queued(1000, 2**24)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        first = await fleet.UploadHardExamples(iter([example_to_pb(k) for k in batch]))
        again = await fleet.UploadHardExamples(iter([example_to_pb(k) for k in batch]))
    assert (first.accepted, first.duplicates) == (hard, 0)
    assert (again.accepted, again.duplicates) == (0, hard)
    assert sorted(r.record_id for r in stored(registry)) == sorted(k.record_id for k in batch)


async def _stalled(first: list[pb.HardExample], release: asyncio.Event):
    """Send ``first``, then hold the stream open without sending more."""
    for message in first:
        yield message
    await release.wait()


@pytest.mark.e2e
async def test_upload_identity_is_checked_before_the_stream_is_read(start_gateway, tmp_path):
    """An agent token uploading as another agent is refused at the first message, while its
    stream is still open, and nothing is stored."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-secret-012345]\nagents: {ag-secret-012345: agent-0}\n")
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, tokens_file=tokens)
    release = asyncio.Event()
    message = pb.HardExample(agent_id="agent-1", task="digits", record_id="agent-1.1.0",
                             inputs=[pb.TensorBlob(name="pixels", datatype="UINT8",
                                                   shape=[1, 2**20], data=bytes(2**20))])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.UploadHardExamples(_stalled([message], release), timeout=30,
                                           metadata=call_metadata("ag-secret-012345"))
    release.set()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stored(registry) == []


@pytest.mark.e2e
async def test_an_upload_over_the_byte_cap_is_refused_while_it_is_read(start_gateway,
                                                                       tmp_path):
    """An upload past the gateway's per-upload byte cap is refused as soon as it passes it,
    with INVALID_ARGUMENT naming the limit, while the stream is still open."""
    gateway = await start_gateway(registry=tmp_path / "registry",
                                  hard_examples={"max_upload_bytes": 65536})
    release = asyncio.Event()
    messages = [pb.HardExample(agent_id="agent-0", task="digits", record_id=f"agent-0.{i}.0",
                               inputs=[pb.TensorBlob(name="pixels", datatype="UINT8",
                                                     shape=[1, 20_000], data=bytes(20_000))])
                for i in range(1, 5)]
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.UploadHardExamples(_stalled(messages, release), timeout=30)
    release.set()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "65536 bytes" in err.value.details()


@pytest.mark.e2e
async def test_an_agent_over_its_quota_keeps_what_was_refused(start_gateway, start_agent,
                                                              tmp_path, digits_test):
    """Past its disk quota an agent's uploads get RESOURCE_EXHAUSTED; what the gateway did
    not store stays queued in the agent's ledger."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry,
                                  hard_examples={"agent_quota_bytes": 65536})
    agent = await start_agent(gateway.address, status_interval_s=3600,
                              hard_examples={"upload_batch_records": 10})
    x, _ = digits_test
    hard = 0
    while hard <= 100:  # more than 64 KB of records
        hard += await answer_rows(agent, x)
    with pytest.raises(Overloaded, match="quota"):
        await agent.uploader.upload()
    held = len(stored(registry))
    assert 0 < held < hard
    assert agent.ledger.stats.queued == hard - held


@pytest.mark.e2e
async def test_a_refused_record_is_quarantined_and_the_queue_moves_on(start_gateway,
                                                                      start_agent, tmp_path,
                                                                      digits_dir, digits_test):
    """Records the gateway refuses (inputs over its limit) are quarantined and counted at
    the agent; the records queued behind them are stored."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry,
                                  hard_examples={"max_record_bytes": 1024})
    wide = digits_like_model(tmp_path / "wide.onnx", "softmax", inputs=512)
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    wide_policy = tmp_path / "wide.yaml"
    wide_policy.write_text(dump_policy(policy.model_copy(update={
        "name": "wide", "threshold": 0.99, "calibration_histogram": None})))
    agent = await start_agent(gateway.address, status_interval_s=3600,
                              models={"digits": digits_dir / "edge.onnx", "wide": wide},
                              policies=[digits_dir / "policy.yaml", wide_policy])
    big = await answer_rows(agent, np.zeros((5, 512), dtype=np.float32), task="wide")
    x, _ = digits_test
    small = await answer_rows(agent, x[:120])
    assert big == 5 and small
    assert await agent.uploader.upload() == small
    assert len(stored(registry)) == small and stored(registry, "wide") == []
    stats = agent.ledger.stats
    assert (stats.quarantined, stats.queued) == (big, 0)


@pytest.mark.e2e
async def test_shadow_rows_are_kept_with_the_clouds_answer(start_gateway, start_agent,
                                                           tmp_path, digits_dir, digits_test,
                                                           onnx_reference):
    """Shadow-sampled rows are kept once their cloud call ends, with the cloud's answer,
    route edge and reason sampled."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    shadow_policy = tmp_path / "shadow.yaml"
    shadow_policy.write_text(dump_policy(policy.model_copy(update={"threshold": 0.0,
                                                                   "shadow_rate": 1.0})))
    agent = await start_agent(gateway.address, status_interval_s=3600,
                              policies=[shadow_policy],
                              hard_examples={"flush_interval_s": 0.05})
    x, _ = digits_test
    await agent.service.answer(InferRequest(model_name="digits", inputs={"pixels": x[:8]}),
                               5.0)
    await wait_until(lambda: agent.ledger.stats.kept == 8, what="shadow rows kept")
    assert await agent.uploader.upload() == 8
    cloud = onnx_reference("cloud", x[:8])
    for i, record in enumerate(sorted(stored(registry), key=lambda r: r.seq)):
        assert (record.example.route, record.example.reason) == ("edge", "sampled")
        np.testing.assert_allclose(record.example.cloud_scores, cloud[i], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.e2e
async def test_fleet_status_shows_the_ledger(start_gateway, start_agent, tmp_path,
                                             digits_test):
    """The agent's status report carries its ledger's counters, and `fleet status --json`
    shows them per agent."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = await start_agent(gateway.address, status_interval_s=3600)
    x, _ = digits_test
    hard = await answer_rows(agent, x[:120])
    await agent.uploader.upload()
    await agent.fleet.report()
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edgecloud", "fleet", "status", "--json",
                         "--registry", str(registry)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["hard_examples"] == {"kept": hard, "queued": 0, "queued_bytes": 0,
                                    "uploaded": hard, "evicted_age": 0, "evicted_space": 0,
                                    "quarantined": 0, "dropped": 0, "evicted": 0}


@pytest.mark.e2e
async def test_an_agent_older_than_record_ids_is_still_kept_once(start_gateway, tmp_path):
    """Hard examples from an agent that sends no record ids (an older version, during an
    upgrade) are stored, named by their content, so a resend is still kept once."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    row = np.arange(64, dtype="<f4").reshape(1, 64)
    message = pb.HardExample(agent_id="old-agent", task="digits", model_version="1",
                             inputs=[pb.TensorBlob(name="pixels", datatype="FP32",
                                                   shape=[1, 64], data=row.tobytes())],
                             edge_scores=[0.5] * 10, cloud_scores=[0.25] * 10,
                             route="cloud", reason="low_confidence", confidence=0.2, at=5.0)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        first = await fleet.UploadHardExamples(iter([message]))
        again = await fleet.UploadHardExamples(iter([message]))
    assert (first.accepted, first.duplicates, list(first.rejected)) == (1, 0, [])
    assert (again.accepted, again.duplicates) == (0, 1)
    (record,) = stored(registry)
    assert record.agent_id == "old-agent" and record.seq == 0
    np.testing.assert_array_equal(record.example.inputs[0].array(), row)
    assert record.example.cloud_scores == (0.25,) * 10
