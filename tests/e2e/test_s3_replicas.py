"""Two gateway replicas on one ``s3://`` registry (a real SeaweedFS on loopback)."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from fleet_helpers import publish_model, publish_policy, running_version, wait_until
from s3_server import CREDENTIALS

from edgecloud.core.tensors import InferRequest

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
