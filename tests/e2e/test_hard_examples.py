"""Hard examples flow from agents back to the gateway for relabelling."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from edgecloud.cloud_gateway.registry import Registry
from edgecloud.core.tensors import InferRequest


@pytest.mark.e2e
async def test_escalated_rows_are_uploaded_with_both_answers(start_gateway, start_agent,
                                                            tmp_path, digits_test,
                                                            onnx_reference):
    """Rows escalated for low confidence are spooled, uploaded, acknowledged and kept in
    the registry with their inputs and the edge's and cloud's scores; the spool empties."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    agent = await start_agent(gateway.address, status_interval_s=3600)
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(model_name="digits",
                                                     inputs={"pixels": x[:120]}), 5.0)
    hard = [i for i, route in enumerate(answer.routing.routes()) if route.value == "cloud"]
    assert hard
    sent = await agent.fleet.upload_hard_examples()
    assert sent == len(hard)
    stored = Registry(registry).hard_examples("digits")
    assert len(stored) == len(hard)
    edge = onnx_reference("edge", x[:120])
    cloud = onnx_reference("cloud", x[:120])
    for i, record in zip(hard, stored, strict=True):
        pixels = np.frombuffer(base64.b64decode(record["inputs"]["pixels"]["data"]),
                               dtype="<f4").reshape(record["inputs"]["pixels"]["shape"])
        np.testing.assert_array_equal(pixels, x[i:i + 1])
        np.testing.assert_allclose(record["edge_scores"], edge[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(record["cloud_scores"], cloud[i], rtol=1e-5, atol=1e-6)
        assert record["agent_id"] == agent.settings.agent_id
        assert record["reason"] == "low_confidence"
    assert not list((agent.settings.data_dir / "hard").glob("*.jsonl"))
    assert await agent.fleet.upload_hard_examples() == 0


@pytest.mark.e2e
async def test_failed_upload_keeps_the_batch(start_gateway, start_agent, tmp_path,
                                             digits_test):
    """With the gateway gone the batch stays on disk and goes up once it is back."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry)
    address = gateway.address
    agent = await start_agent(address, status_interval_s=3600)
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(model_name="digits",
                                                     inputs={"pixels": x[:120]}), 5.0)
    hard = sum(route.value == "cloud" for route in answer.routing.routes())
    await gateway.stop(0.1)
    assert await agent.fleet.upload_hard_examples() == 0
    assert list((agent.settings.data_dir / "hard").glob("uploading-*.jsonl"))
    await start_gateway(listen=address, registry=registry)
    sent = 0
    for _ in range(50):
        sent = await agent.fleet.upload_hard_examples()
        if sent:
            break
        await asyncio.sleep(0.1)
    assert sent == hard
    assert len(Registry(registry).hard_examples("digits")) == hard
