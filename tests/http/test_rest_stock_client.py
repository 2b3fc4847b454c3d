"""tritonclient.http, unchanged, against the agent's HTTP port: JSON and binary tensors.

tritonclient registers its own ``inference.*`` protobuf messages (through its gRPC
half), so, as in the gRPC wire tests, it runs in a subprocess that never imports
edgecloud; this process starts the servers and checks the answers against
onnxruntime run directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from stock_client import run_client_script

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

address, model, x_path = sys.argv[1], sys.argv[2], sys.argv[3]
client = httpclient.InferenceServerClient(url=address)
x = np.load(x_path)

def infer(binary, **kwargs):
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(model, [inp], outputs=[out], request_id="app-7", **kwargs)
    response = result.get_response()
    return {"outputs": result.as_numpy("probabilities").tolist(),
            "parameters": response.get("parameters", {}), "id": response.get("id"),
            "binary": "data" not in response["outputs"][0]}

# No requested outputs: the client asks for all of them in binary (binary_data_output).
inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
every = client.infer(model, [inp], parameters={"route": "edge"})

try:
    client.infer("no-such-model", [inp])
    refused = None
except InferenceServerException as exc:
    refused = {"status": exc.status(), "message": exc.message()}

print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(),
    "metadata": client.get_model_metadata(model),
    "config": client.get_model_config(model),
    "json": infer(False),
    "binary": infer(True, timeout=2_000_000),
    "every": {"outputs": every.as_numpy("probabilities").tolist(),
              "parameters": every.get_response().get("parameters", {})},
    "refused": refused,
}))
"""


@pytest.mark.e2e
async def test_tritonclient_http_against_the_agent(start_gateway, start_agent, tmp_path,
                                                   digits_test, onnx_reference):
    """Health, metadata and inference through tritonclient.http with JSON tensors and with
    binary tensors: outputs equal the ONNX model of each row's route, the routing
    parameters come back, binary outputs arrive as binary; an unknown model is the
    client's error with status 404."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    x, _ = digits_test
    rows = x[:16]
    x_path = tmp_path / "x.npy"
    np.save(x_path, rows)

    got = await run_client_script(CLIENT_SCRIPT, agent.http_address, x_path)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "edgecloud-agent"
    assert got["metadata"]["inputs"] == [{"name": "pixels", "datatype": "FP32",
                                          "shape": [-1, 64]}]
    assert got["config"]["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32",
                                        "dims": [-1, 10]}]
    for kind in ("json", "binary"):
        answer = got[kind]
        assert answer["id"] == "app-7" and answer["binary"] == (kind == "binary")
        params = answer["parameters"]
        assert params["model_version"] == "1"
        routes = params["route"].split(",")
        assert len(routes) == len(rows) == len(params["confidence"].split(","))
        assert "cloud" in routes and "edge" in routes
        expected = np.where(np.array(routes)[:, None] == "cloud",
                            onnx_reference("cloud", rows), onnx_reference("edge", rows))
        np.testing.assert_allclose(np.array(answer["outputs"]), expected, rtol=1e-5,
                                   atol=1e-6)
    assert set(got["every"]["parameters"]["route"].split(",")) == {"edge"}
    np.testing.assert_allclose(np.array(got["every"]["outputs"]),
                               onnx_reference("edge", rows), rtol=1e-5, atol=1e-6)
    assert got["refused"]["status"] == "404"
    assert "no-such-model" in got["refused"]["message"]
