"""Two gateway replicas on one ``s3://`` registry (a real SeaweedFS on loopback)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import grpc
import numpy as np
import pytest
from fleet_helpers import publish_model, publish_policy, running_version, wait_until
from s3_server import CREDENTIALS

from edgecloud.core.hard_example_codec import example_to_pb
from edgecloud.core.tensors import InferRequest
from edgecloud.edge_agent.service import hard_rows
from edgecloud.operations import GatewayOperator
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

TASK = "digits"


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_a_publication_on_one_replica_reaches_an_agent_on_the_other(
        s3_endpoint, bucket, monkeypatch, start_gateway, start_agent, digits_dir, digits_test):
    """Replicas A and B share an s3:// registry: versions published into the bucket and a
    rollout made through B's registry reach the agent connected to A (which escalates to
    A's cloud model), and the agent's report, sent to A, is read on B."""
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    registry = f"s3://{bucket}/replicas-{uuid.uuid4().hex[:8]}"
    replica_a = await start_gateway(registry=registry, replica="a", registry_poll_ms=100)
    replica_b = await start_gateway(registry=registry, replica="b", registry_poll_ms=100)
    agent = await start_agent(replica_a.address, models={}, policies=[], agent_id="cam-1",
                              status_interval_s=0.2)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="1", promote=True)
    await wait_until(lambda: running_version(agent) == "1", timeout_s=30,
                     what="version 1 on the agent of replica a")

    x, _ = digits_test
    cloud = await agent.service.answer(InferRequest(
        model_name=TASK, inputs={"pixels": x[:4]}, parameters={"route": "cloud"}), 5.0)
    assert set(cloud.routing.routes()) == {"cloud"}

    reg_b = replica_b.hub.registry
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="2")
    await asyncio.to_thread(reg_b.set_rollout, "start", TASK, version="2", percent=100.0)
    await wait_until(lambda: running_version(agent) == "2", timeout_s=30,
                     what="version 2, rolled out through replica b, on the agent of replica a")
    await wait_until(lambda: (reg_b.agent_status("cam-1") or {}).get("tasks", [{}])[0].get(
        "model_version") == "2", timeout_s=30, what="the agent's report, read on replica b")
    answer = await agent.service.answer(InferRequest(model_name=TASK,
                                                     inputs={"pixels": x[:8]}), 5.0)
    assert answer.outputs["probabilities"].shape == (8, 10)
    assert np.isfinite(answer.outputs["probabilities"]).all()


def edgecloud(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_rows_uploaded_through_one_replica_are_exported_once_through_the_other(
        s3_endpoint, bucket, monkeypatch, start_gateway, start_agent, digits_test,
        tmp_path) -> None:
    """An agent uploads its hard rows through replica A of an s3:// registry, one object
    per upload of 16; replica B exports every row exactly once, in ledger order; the same records
    resent through B are all duplicates and store nothing; `examples export --registry
    s3://...` reads the same rows straight from the bucket."""
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    registry = f"s3://{bucket}/shared-{uuid.uuid4().hex[:8]}"
    replica_a = await start_gateway(registry=registry, replica="a")
    replica_b = await start_gateway(registry=registry, replica="b")
    agent = await start_agent(replica_a.address, status_interval_s=3600, agent_id="cam-1",
                              hard_examples={"upload_batch_records": 16})
    x, _ = digits_test
    hard = 0
    while hard < 40:
        answer = await agent.service.answer(InferRequest(model_name=TASK,
                                                         inputs={"pixels": x[:120]}), 5.0)
        rows = hard_rows(answer.routing.reason)
        hard += 0 if rows is None else len(rows)
    assert await agent.uploader.upload() == hard
    objects = await asyncio.to_thread(replica_b.hub.registry.store.list,
                                      f"hard_examples/{TASK}/cam-1/")
    assert len(objects) == -(-hard // 16)  # one object per upload of up to 16 records

    operator = GatewayOperator(replica_b.address)
    try:
        exported = await asyncio.to_thread(lambda: list(operator.hard_examples(TASK)))
    finally:
        operator.close()
    assert [k.seq for k in exported] == list(range(1, hard + 1))
    assert {k.agent_id for k in exported} == {"cam-1"}

    async with grpc.aio.insecure_channel(replica_b.address) as channel:
        ack = await pb_grpc.FleetServiceStub(channel).UploadHardExamples(
            iter([example_to_pb(k) for k in exported]), timeout=30)
    assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (0, hard, 0)

    out = tmp_path / "export"
    result = await asyncio.to_thread(edgecloud, "examples", "export", "--registry", registry,
                                     "--task", TASK, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"exported {hard} hard examples" in result.stdout
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [line["record_id"] for line in lines] == [k.record_id for k in exported]
