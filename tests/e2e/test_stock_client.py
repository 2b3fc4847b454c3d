"""A stock Triton client talks to both the gateway and the agent unchanged.

tritonclient registers its own ``inference.*`` protobuf messages, so it runs
in a subprocess that never imports edgecloud; this process only starts the
servers and compares the outputs with onnxruntime run directly.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest
from stock_client import run_client_script

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

address, model, x_path = sys.argv[1], sys.argv[2], sys.argv[3]
client = grpcclient.InferenceServerClient(url=address)
x = np.load(x_path)
inp = grpcclient.InferInput("pixels", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("probabilities")])
meta = client.get_model_metadata(model, as_json=True)

# The streaming API: one request per row, answers collected by the callback.
import queue
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
for i in range(len(x)):
    row = grpcclient.InferInput("pixels", [1, x.shape[1]], "FP32")
    row.set_data_from_numpy(x[i:i + 1])
    client.async_stream_infer(model, [row], request_id=str(i))
client.stop_stream()
streamed = {}
while not answers.empty():
    answer, error = answers.get()
    assert error is None, error
    reply = answer.get_response(as_json=True)
    route = reply.get("parameters", {}).get("route", {}).get("string_param", "cloud")
    streamed[int(reply["id"])] = (route, answer.as_numpy("probabilities")[0].tolist())

response = result.get_response(as_json=True)
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(as_json=True),
    "metadata": meta,
    "outputs": result.as_numpy("probabilities").tolist(),
    "parameters": response.get("parameters", {}),
    "streamed": [streamed[i] for i in range(len(x))],
}))
"""


@pytest.mark.e2e
async def test_tritonclient_against_gateway_and_agent(start_gateway, start_agent, tmp_path,
                                                      digits_test, onnx_reference):
    """Liveness, readiness, metadata, inference and streaming through tritonclient;
    outputs equal running the ONNX files directly (gateway: cloud model; agent: per-row
    route)."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    x, _ = digits_test
    rows = x[:16]
    x_path = tmp_path / "x.npy"
    np.save(x_path, rows)

    from_gateway = await run_client_script(CLIENT_SCRIPT, gateway.address, x_path)
    assert from_gateway["live"] and from_gateway["ready"] and from_gateway["model_ready"]
    assert from_gateway["metadata"]["inputs"][0] == {
        "name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]
    }
    np.testing.assert_allclose(np.array(from_gateway["outputs"]),
                               onnx_reference("cloud", rows), rtol=1e-5, atol=1e-6)

    from_agent = await run_client_script(CLIENT_SCRIPT, agent.address, x_path)
    assert from_agent["live"] and from_agent["ready"] and from_agent["model_ready"]
    assert from_agent["server"]["name"] == "edgecloud-agent"
    routes = from_agent["parameters"]["route"]["string_param"].split(",")
    assert len(routes) == len(rows)
    expected = np.where(np.array(routes)[:, None] == "cloud",
                        onnx_reference("cloud", rows), onnx_reference("edge", rows))
    np.testing.assert_allclose(np.array(from_agent["outputs"]), expected, rtol=1e-5, atol=1e-6)
    # Streamed rows are routed one by one, as the single call routed them.
    assert [route for route, _ in from_agent["streamed"]] == routes
    streamed = np.array([probs for _, probs in from_agent["streamed"]])
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array([p for _, p in from_gateway["streamed"]]),
                               onnx_reference("cloud", rows), rtol=1e-5, atol=1e-6)


CONFIG_SCRIPT = r"""
import json, sys
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url=sys.argv[1])
print(json.dumps(client.get_model_config(sys.argv[2], as_json=True)["config"]))
"""


@pytest.mark.e2e
async def test_tritonclient_reads_the_model_config(start_gateway, start_agent):
    """tritonclient's get_model_config gets name, platform, inputs, outputs and max batch
    size from the gateway (batched: dims without the batch dimension) and the agent
    (not batched: full shapes), as Triton answers."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    configs = {}
    for side, address in (("gateway", gateway.address), ("agent", agent.address)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CONFIG_SCRIPT, address, "digits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, stderr.decode()
        configs[side] = json.loads(stdout)
    batch = gateway.settings.batching.max_batch_size
    assert configs["gateway"] == {
        "name": "digits", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": batch,
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": ["64"]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["10"]}],
        # Triton's own field: the stock client reads the provider the model runs on.
        "parameters": {"execution_provider": {"string_value": "CPUExecutionProvider"}},
    }
    assert configs["agent"] == {
        "name": "digits", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": ["-1", "64"]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["-1", "10"]}],
    }
