"""A new user's own scikit-learn models, exported with skl2onnx's defaults, end to end.

A logistic regression at the edge and a random forest in the cloud, both
exported as skl2onnx makes them by default (a label tensor and a ZipMap of
probabilities): served, routed, tuned and published with no hand-written YAML.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
from fleet_helpers import wait_until

from edgecloud.core import codec
from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import InferRequest, InferResponse
from edgecloud.router import parse_policy

pytest.importorskip("skl2onnx")
from sklearn_models import export, iris

TASK = "iris"


async def edgecloud(*args: str) -> tuple[int, str, str]:
    """Run the edgecloud command as a user would; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def call(stub, x: np.ndarray, **params) -> InferResponse:
    request = codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"X": x}, parameters=params))
    return codec.decode_infer_response(await stub.ModelInfer(request, timeout=5.0))


@pytest.mark.e2e
async def test_default_sklearn_exports_serve_route_tune_and_publish(
        start_gateway, start_agent, channels, tmp_path: Path) -> None:
    """Default skl2onnx exports of a logistic regression (edge) and a random forest (cloud)
    serve and route with no policy, tune into a policy, publish to the fleet, and a fleet
    agent serves them: the class scores are found without being named."""
    edge = export("logistic", tmp_path / "logistic.onnx")
    cloud = export("forest", tmp_path / "forest.onnx")
    x, y = iris()
    data = tmp_path / "iris.npz"
    np.savez(data, X=x, y=y)

    # Serve and route: `gateway serve --model iris=forest.onnx`,
    # `agent run --model iris=logistic.onnx --gateway ...` (no policy file).
    gateway = await start_gateway(models={TASK: cloud})
    agent = await start_agent(gateway.address, models={TASK: edge}, policies=[])
    task = agent.service.task(TASK)
    assert task.current.scores_output == "output_probability"
    assert task.cloud_checked and task.cloud_problem is None
    stub = channels(agent.address)
    everything = await call(stub, x[:20], confidence_threshold=1.0)
    assert set(everything.parameters["route"].split(",")) == {"cloud"}
    forest = OnnxModel.load(cloud, name="forest").run({"X": x[:20]})
    np.testing.assert_allclose(everything.outputs["output_probability"],
                               forest["output_probability"], rtol=1e-6)
    np.testing.assert_array_equal(everything.outputs["output_label"], forest["output_label"])
    routed = await call(stub, x)
    assert set(routed.parameters["route"].split(",")) <= {"edge", "cloud"}

    # Tune: `policy tune` names the task and finds the class scores itself.
    policy_file = tmp_path / "policy.yaml"
    code, out, err = await edgecloud(
        "policy", "tune", "--edge", str(edge), "--cloud", str(cloud), "--data", str(data),
        "--out", str(policy_file), "--name", TASK, "--target-escalation", "0.3")
    assert code == 0, err
    assert "edge class scores: output 'output_probability'" in out
    policy = parse_policy(policy_file.read_text())
    assert policy.name == TASK and policy.scores_output == "output_probability"

    # Publish both models and the tuned policy through the gateway; a fleet agent runs them.
    for args in (("models", "publish", TASK, str(edge), "--target", "edge"),
                 ("models", "publish", TASK, str(cloud), "--target", "cloud"),
                 ("policy", "publish", TASK, str(policy_file))):
        code, out, err = await edgecloud(*args, "--gateway", gateway.address)
        assert code == 0, (args, err)
    fleet_agent = await start_agent(gateway.address, models={}, policies=[], agent_id="cam-1")
    await wait_until(lambda: TASK in fleet_agent.service.task_names()
                     and fleet_agent.service.task(TASK).current.policy.version == "1",
                     what="the published task on a fleet agent")
    answer = await call(channels(fleet_agent.address), x[:30])
    assert answer.outputs["output_probability"].shape == (30, 3)
    assert set(answer.parameters["route"].split(",")) <= {"edge", "cloud"}
