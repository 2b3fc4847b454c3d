"""The gateway's model of a task is checked when the agent connects, never on a request."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import structlog
from fleet_helpers import digits_like_model, wait_until
from prometheus_client import generate_latest

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest, InferResponse
from edgecloud.operations import fleet_rows

TASK = "digits"


async def call(stub, x: np.ndarray, **params) -> InferResponse:
    request = codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"pixels": x}, parameters=params)
    )
    return codec.decode_infer_response(await stub.ModelInfer(request, timeout=5.0))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("cloud", "kind", "fragment"),
    [
        ({"classes": 11}, "mismatch", "has 11 classes, the edge model ('probabilities') 10"),
        ({"input_name": "X"}, "mismatch", "export the gateway's model 'digits' with the input "
                                          "name 'pixels'"),
        ({"served_as": "other"}, "not_served", "the gateway serves no model 'digits'"),
    ],
    ids=["classes", "input-names", "not-served"],
)
async def test_a_cloud_model_that_does_not_fit_is_refused_at_start(
        cloud, kind, fragment, start_gateway, start_agent, channels, digits_test, tmp_path):
    """A cloud model with other classes, other input names, or none at all is refused when
    the agent starts: one log line, the reason in metrics and the status report, and every
    row (a mixed batch, a forced one) answered at the edge as cloud_unavailable, never an
    error."""
    served_as = cloud.pop("served_as", TASK)
    model = digits_like_model(tmp_path / "cloud.onnx", "softmax", **cloud)
    gateway = await start_gateway(models={served_as: model})
    with structlog.testing.capture_logs() as logs:
        agent = await start_agent(gateway.address, status_interval_s=0.2)
    refused = [entry for entry in logs if entry["event"] == "cloud_refused"]
    assert len(refused) == 1 and fragment in refused[0]["problem"]
    task = agent.service.task(TASK)
    assert task.cloud_problem is not None and task.cloud_problem.kind == kind

    stub = channels(agent.address)
    x, _ = digits_test
    mixed = await call(stub, x[:100], confidence_threshold=0.9)
    assert set(mixed.parameters["route"].split(",")) == {"edge"}
    assert "cloud_unavailable" in mixed.parameters["reason"].split(",")
    assert mixed.outputs["probabilities"].shape == (100, 10)
    forced = await call(stub, x[:1], route="cloud")
    assert (forced.parameters["route"], forced.parameters["reason"]) == ("edge",
                                                                         "cloud_unavailable")
    scraped = generate_latest(agent.metrics.registry).decode()
    assert f'edgecloud_agent_cloud_refused{{problem="{kind}",task="{TASK}"}} 1.0' in scraped

    reported = gateway.settings.data_dir / "registry" / "agents" / f"{agent.settings.agent_id}.json"
    await wait_until(lambda: reported.exists() and "cloud_problem" in reported.read_text()
                     and json.loads(reported.read_text())["tasks"][0]["cloud_problem"],
                     what="status report with the reason")
    row = fleet_rows([json.loads(reported.read_text())], time.time())[0]
    assert fragment in row["cloud_problem"]


@pytest.mark.e2e
async def test_the_cloud_model_is_checked_again_on_reconnect(start_gateway, start_agent,
                                                             channels, digits_test, tmp_path):
    """A task refused for a mismatching gateway model escalates again once the gateway
    comes back on its address with a model that fits."""
    wrong = digits_like_model(tmp_path / "eleven.onnx", "softmax", classes=11)
    gateway = await start_gateway(models={TASK: wrong})
    address = gateway.address
    agent = await start_agent(address)
    task = agent.service.task(TASK)
    assert task.cloud_problem is not None
    stub = channels(agent.address)
    x, _ = digits_test
    assert (await call(stub, x[:1], route="cloud")).parameters["route"] == "edge"

    await gateway.stop(grace_s=0.1)
    with structlog.testing.capture_logs() as logs:
        await start_gateway(listen=address)  # the digits cloud model, which fits
        await wait_until(lambda: task.cloud_problem is None, what="the cloud accepted again")
    assert any(entry["event"] == "cloud_accepted" for entry in logs)
    assert (await call(stub, x[:1], route="cloud")).parameters["route"] == "cloud"
