"""v2 REST inference on the HTTP port of agent and gateway, against the gRPC answers."""

from __future__ import annotations

import json
import random

import aiohttp
import numpy as np
import pytest

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.tensors import InferRequest

TASK = "digits"
AGENT_TOKEN = "ag-secret-012345"
OPERATOR_TOKEN = "op-secret-012345"
VIEWER_TOKEN = "vw-secret-012345"
HEADER = "Inference-Header-Content-Length"
ROUTING = ("route", "reason", "confidence", "model_version")


class Reply:
    """One HTTP answer: status, headers, body; the JSON part and the binary part."""

    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        length = headers.get(HEADER)
        self.json_bytes = int(length) if length is not None else len(body)

    def json(self) -> dict:
        return json.loads(self.body[:self.json_bytes])

    def output(self, name: str) -> np.ndarray:
        """An output as an array, from JSON data or from the binary part."""
        doc = self.json()
        offset = self.json_bytes
        for out in doc["outputs"]:
            size = out.get("parameters", {}).get("binary_data_size")
            if out["name"] == name:
                if size is None:
                    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])
                raw = self.body[offset:offset + size]
                return np.frombuffer(raw, "<f4").reshape(out["shape"])
            offset += size or 0
        raise KeyError(name)


async def request(method: str, url: str, *, body: bytes | None = None,
                  headers: dict | None = None) -> Reply:
    """One call; a body goes as JSON unless ``headers`` say otherwise."""
    if headers is None and body is not None:
        headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=body, headers=headers) as response:
            return Reply(response.status, response.headers, await response.read())


def json_body(x: np.ndarray, **extra) -> bytes:
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                       "data": x.ravel().tolist()}], **extra}
    return json.dumps(doc).encode()


def binary_body(x: np.ndarray, **extra) -> tuple[bytes, dict]:
    """A binary-extension request: JSON header, then the raw FP32 bytes; outputs binary."""
    raw = x.astype("<f4").tobytes()
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                       "parameters": {"binary_data_size": len(raw)}}],
           "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
           **extra}
    header = json.dumps(doc).encode()
    return header + raw, {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


async def grpc_answer(channels, address: str, x: np.ndarray, token: str | None = None):
    stub = channels(address)
    reply = await stub.ModelInfer(
        codec.encode_infer_request(InferRequest(model_name=TASK, inputs={"pixels": x})),
        timeout=10, metadata=call_metadata(token))
    return codec.decode_infer_response(reply)


def _infer_url(app) -> str:
    return f"http://{app.http_address}/v2/models/{TASK}/infer"


@pytest.mark.e2e
async def test_agent_answers_json_and_binary_as_grpc_does(start_gateway, start_agent,
                                                          channels, digits_test):
    """The agent answers the same rows over REST, in JSON and in binary, with the outputs
    and the routing parameters (route, reason, confidence, model_version) gRPC gives; rows
    of both routes (edge and cloud) are among them; the id comes back."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    x, _ = digits_test
    rows = x[:24]
    expected = await grpc_answer(channels, agent.address, rows)
    assert {"edge", "cloud"} <= set(expected.parameters["route"].split(","))

    by_json = await request("POST", _infer_url(agent), body=json_body(rows, id="r-1"),
                            headers={"Content-Type": "application/json"})
    assert by_json.status == 200, by_json.body
    assert by_json.headers["Content-Type"].startswith("application/json")
    doc = by_json.json()
    assert doc["id"] == "r-1" and doc["model_name"] == TASK
    assert doc["model_version"] == expected.model_version
    assert {k: doc["parameters"][k] for k in ROUTING} == \
        {k: expected.parameters[k] for k in ROUTING}
    np.testing.assert_allclose(by_json.output("probabilities"),
                               expected.outputs["probabilities"], rtol=1e-6)

    body, headers = binary_body(rows, id="r-2")
    by_binary = await request("POST", _infer_url(agent), body=body, headers=headers)
    assert by_binary.status == 200, by_binary.body
    assert int(by_binary.headers[HEADER]) < len(by_binary.body)
    doc = by_binary.json()
    assert doc["id"] == "r-2"
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": rows.shape[0] * 10 * 4}
    assert {k: doc["parameters"][k] for k in ROUTING} == \
        {k: expected.parameters[k] for k in ROUTING}
    np.testing.assert_array_equal(by_binary.output("probabilities"),
                                  expected.outputs["probabilities"])


@pytest.mark.e2e
async def test_request_parameters_reach_the_router(start_gateway, start_agent, digits_test):
    """route=edge forces every row to the edge over REST, as it does on gRPC; the versions
    form of the URL answers for the running version and 404s another."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    x, _ = digits_test
    reply = await request("POST", _infer_url(agent),
                          body=json_body(x[:24], parameters={"route": "edge"}),
                          headers={"Content-Type": "application/json"})
    assert reply.status == 200
    assert set(reply.json()["parameters"]["reason"].split(",")) == {"forced"}
    base = f"http://{agent.http_address}/v2/models/{TASK}/versions"
    reply = await request("POST", f"{base}/1/infer", body=json_body(x[:1]))
    assert reply.status == 200 and reply.json()["model_version"] == "1"
    reply = await request("POST", f"{base}/7/infer", body=json_body(x[:1]))
    assert reply.status == 404 and "'7'" in reply.json()["error"]


@pytest.mark.e2e
async def test_gateway_answers_json_and_binary_as_grpc_does(start_gateway, channels,
                                                            digits_test):
    """The gateway's REST infer gives the cloud model's outputs and version, as gRPC."""
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    x, _ = digits_test
    rows = x[:8]
    expected = await grpc_answer(channels, gateway.address, rows)
    by_json = await request("POST", _infer_url(gateway), body=json_body(rows))
    assert by_json.status == 200, by_json.body
    assert by_json.json()["model_version"] == expected.model_version
    np.testing.assert_allclose(by_json.output("probabilities"),
                               expected.outputs["probabilities"], rtol=1e-6)
    body, headers = binary_body(rows)
    by_binary = await request("POST", _infer_url(gateway), body=body, headers=headers)
    assert by_binary.status == 200, by_binary.body
    np.testing.assert_array_equal(by_binary.output("probabilities"),
                                  expected.outputs["probabilities"])


@pytest.mark.e2e
async def test_health_and_metadata(start_gateway, start_agent):
    """Live, ready, server and model metadata, model config (as Triton: the gateway's
    batched, without the batch dimension), model ready (plain and versions form) on both
    processes; an unknown model is a 404; a draining agent is not ready (503)."""
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    for app, server in ((gateway, "edgecloud-gateway"), (agent, "edgecloud-agent")):
        base = f"http://{app.http_address}/v2"
        for path in ("/health/live", "/health/ready", f"/models/{TASK}/ready",
                     f"/models/{TASK}/versions/1/ready"):
            reply = await request("GET", base + path)
            assert reply.status == 200, (server, path, reply.body)
        reply = await request("GET", base)
        assert reply.json() == {"name": server, "version": app.service.server_version,
                                "extensions": ["binary_tensor_data"]}
        for path in (f"/models/{TASK}", f"/models/{TASK}/versions/1"):
            doc = (await request("GET", base + path)).json()
            assert doc["name"] == TASK and doc["versions"] == ["1"]
            assert doc["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
            assert doc["outputs"][0]["datatype"] == "FP32"
        config = (await request("GET", base + f"/models/{TASK}/config")).json()
        assert config["name"] == TASK and config["backend"] == "onnxruntime"
        assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32",
                                    "dims": [64] if app is gateway else [-1, 64]}]
        for path in ("/models/nothing", "/models/nothing/ready", "/models/nothing/config"):
            reply = await request("GET", base + path)
            assert reply.status == 404 and "nothing" in reply.json()["error"]
    agent.service.set_ready(False)
    base = f"http://{agent.http_address}/v2"
    assert (await request("GET", base + "/health/ready")).status == 503
    assert (await request("GET", base + f"/models/{TASK}/ready")).status == 503
    reply = await request("POST", _infer_url(agent),
                          body=json_body(np.zeros((1, 64), np.float32)))
    assert reply.status == 503 and "not ready" in reply.json()["error"]
    assert (await request("GET", base + "/health/live")).status == 200
    agent.service.set_ready(True)


def _doc(**fields) -> bytes:
    pixel = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    return json.dumps({"inputs": [{**pixel, **fields}]}).encode()


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    # (what, body, headers, status, part of the message)
    ("not JSON", b'{"inputs": [', JSON, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", JSON, 400, "must be a JSON object"),
    ("not UTF-8", b'{"id": "\xff"}', JSON, 400, "UTF-8"),
    ("nested too deeply", b"[" * 20_000, JSON, 400, "nested too deeply"),
    ("no inputs", b'{"inputs": []}', JSON, 400, "no inputs"),
    ("input not an object", b'{"inputs": [3]}', JSON, 400, "input #0"),
    ("unknown datatype", _doc(datatype="FP8"), JSON, 400, "unknown datatype 'FP8'"),
    ("negative dimension", _doc(shape=[-1, 64]), JSON, 400, "negative dimension"),
    ("shape not integers", _doc(shape=[1, "64"]), JSON, 400, "array of integers"),
    ("too few values", _doc(data=[0.0] * 63), JSON, 400, "63 values"),
    ("ragged data", _doc(data=[[0.0] * 32, [0.0] * 31]), JSON, 400, "rectangular"),
    ("strings for FP32", _doc(data=["a"] * 64), JSON, 400, "must hold numbers"),
    ("out of range", _doc(datatype="INT8", data=[300] * 64), JSON, 400, "out of range"),
    ("model wants FP32", _doc(datatype="INT32", data=[1] * 64), JSON, 400, "FP32"),
    ("model wants 64 columns", _doc(shape=[2, 32]), JSON, 400, "pixels"),
    ("no data", _doc(data=None), JSON, 400, "has no data"),
    ("duplicate input", json.dumps({"inputs": [json.loads(_doc())["inputs"][0]] * 2}).encode(),
     JSON, 400, "more than once"),
    ("bad route", json.dumps({**json.loads(_doc()), "parameters": {"route": "moon"}}).encode(),
     JSON, 400, "'route'"),
    ("bad parameter value", json.dumps({**json.loads(_doc()), "parameters": {"k": [1]}})
     .encode(), JSON, 400, "parameter 'k'"),
    ("unknown output", json.dumps({**json.loads(_doc()), "outputs": [{"name": "nope"}]})
     .encode(), JSON, 400, "'nope'"),
    ("classification", json.dumps({**json.loads(_doc()), "outputs": [
        {"name": "probabilities", "parameters": {"classification": 3}}]}).encode(),
     JSON, 400, "not supported"),
    ("shared memory", _doc(data=None, parameters={"shared_memory_region": "r"}), JSON, 400,
     "not supported"),
    ("binary size without header", _doc(data=None, parameters={"binary_data_size": 256}),
     JSON, 400, "binary data"),
    ("header longer than body", _doc(), {**JSON, HEADER: "100000"}, 400, "body has only"),
    ("header not a number", _doc(), {**JSON, HEADER: "ten"}, 400, "number of bytes"),
    ("binary short", _doc(data=None, parameters={"binary_data_size": 256}) + b"\0" * 255,
     {HEADER: str(len(_doc(data=None, parameters={"binary_data_size": 256}))),
      "Content-Type": "application/octet-stream"}, 400, "255 remain"),
    ("binary left over", _doc(data=None, parameters={"binary_data_size": 256}) + b"\0" * 260,
     {HEADER: str(len(_doc(data=None, parameters={"binary_data_size": 256}))),
      "Content-Type": "application/octet-stream"}, 400, "4 bytes of binary data"),
    ("binary and data", _doc(parameters={"binary_data_size": 0}), JSON, 400, "both data"),
    ("text body", _doc(), {"Content-Type": "text/plain"}, 415, "not supported"),
    ("octet-stream without header", _doc(), {"Content-Type": "application/octet-stream"},
     415, HEADER),
    ("over the body limit", b" " * 70_000 + _doc(), JSON, 413, "over the limit"),
]


@pytest.mark.e2e
async def test_bad_requests_get_their_status_and_the_agent_keeps_serving(start_agent,
                                                                         digits_test):
    """Every malformed request is refused with its status and a message saying what is
    wrong (the v2 error document), never a 500; the agent answers a good request after."""
    agent = await start_agent(None, http_listen="127.0.0.1:0", max_request_bytes=65_536)
    x, _ = digits_test
    for what, body, headers, status, words in BAD_REQUESTS:
        reply = await request("POST", _infer_url(agent), body=body, headers=headers)
        assert reply.status == status, (what, reply.status, reply.body[:300])
        assert reply.headers["Content-Type"].startswith("application/json"), what
        assert words in reply.json()["error"], (what, reply.json())
    reply = await request("POST", f"http://{agent.http_address}/v2/models/nope/infer",
                          body=_doc())
    assert reply.status == 404 and "'nope'" in reply.json()["error"]
    reply = await request("POST", _infer_url(agent), body=json_body(x[:1]))
    assert reply.status == 200 and reply.json()["parameters"]["route"] == "edge"


@pytest.mark.e2e
async def test_random_bodies_are_refused_with_4xx(start_agent, digits_test):
    """Random bytes and randomly cut or flipped good requests, as JSON and as binary, get
    a 4xx or a 200, never a 5xx or a dropped connection; the agent serves on."""
    agent = await start_agent(None, http_listen="127.0.0.1:0")
    x, _ = digits_test
    good_json = json_body(x[:2])
    good_binary, headers = binary_body(x[:2])
    rng = random.Random(20261130)
    async with aiohttp.ClientSession() as session:
        for i in range(120):
            seed, seed_headers = ((good_json, JSON) if i % 2 else (good_binary, headers))
            body = bytearray(seed)
            if i % 3 == 0:
                body = bytearray(rng.randbytes(rng.randrange(0, 300)))
            elif i % 3 == 1:
                del body[rng.randrange(len(body)):]
            for _ in range(rng.randrange(1, 4)):
                if body:
                    body[rng.randrange(len(body))] = rng.randrange(256)
            async with session.post(_infer_url(agent), data=bytes(body),
                                    headers=seed_headers) as response:
                assert response.status < 500, (i, await response.text())
                if response.status >= 400:
                    assert "error" in await response.json()
    reply = await request("POST", _infer_url(agent), body=good_json)
    assert reply.status == 200


@pytest.mark.e2e
async def test_gateway_checks_roles_and_escalation_limits(start_gateway, digits_test,
                                                          tmp_path):
    """With tokens, the gateway's REST inference needs an agent or operator token (401
    without, 403 for a viewer) while liveness and server metadata stay open, as on gRPC;
    an agent's rows count against its escalation limit (429 past it) and an operator's
    do not; the request id sent is the one answered."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"operators: [{OPERATOR_TOKEN}]\nviewers: [{VIEWER_TOKEN}]\n"
                      f"agents: {{{AGENT_TOKEN}: agent-0}}\n")
    gateway = await start_gateway(http_listen="127.0.0.1:0", tokens_file=tokens,
                                  escalation_limits={"default": {"rows_per_s": 0.001,
                                                                 "burst": 2}})
    x, _ = digits_test
    base = f"http://{gateway.http_address}/v2"

    def bearer(token: str) -> dict:
        return {"Authorization": f"Bearer {token}", **JSON}

    assert (await request("GET", base + "/health/live")).status == 200
    assert (await request("GET", base + "/health/ready")).status == 200
    assert (await request("GET", base)).status == 200
    assert (await request("GET", base + f"/models/{TASK}")).status == 401
    reply = await request("POST", _infer_url(gateway), body=json_body(x[:1]))
    assert reply.status == 401 and reply.json()["error"] == "missing bearer token"
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    reply = await request("POST", _infer_url(gateway), body=json_body(x[:1]),
                          headers=bearer("not-a-token-at-all"))
    assert reply.status == 401
    reply = await request("POST", _infer_url(gateway), body=json_body(x[:1]),
                          headers=bearer(VIEWER_TOKEN))
    assert reply.status == 403 and "viewer" in reply.json()["error"]

    statuses = []
    for _ in range(3):
        reply = await request("POST", _infer_url(gateway), body=json_body(x[:1]),
                              headers={**bearer(AGENT_TOKEN), "x-request-id": "req-42"})
        statuses.append(reply.status)
        assert reply.headers["x-request-id"] == "req-42"
    assert statuses == [200, 200, 429]
    assert "escalation limit" in reply.json()["error"]
    reply = await request("POST", _infer_url(gateway), body=json_body(x[:4]),
                          headers=bearer(OPERATOR_TOKEN))
    assert reply.status == 200 and len(reply.json()["outputs"][0]["data"]) == 40


@pytest.mark.e2e
async def test_a_spent_timeout_is_a_504(start_gateway, digits_test):
    """The ``timeout`` request parameter (microseconds, as tritonclient sends it) is the
    latency budget: none left is DEADLINE_EXCEEDED, a 504, as on gRPC."""
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    x, _ = digits_test
    reply = await request("POST", _infer_url(gateway),
                          body=json_body(x[:1], parameters={"timeout": 0}))
    assert reply.status == 504 and "deadline" in reply.json()["error"]
    reply = await request("POST", _infer_url(gateway),
                          body=json_body(x[:1], parameters={"timeout": 5_000_000}))
    assert reply.status == 200


@pytest.mark.e2e
async def test_request_ids_reach_the_logs_and_the_answer(start_agent):
    """The caller's x-request-id is bound to the one log line of a refused request and
    comes back in the answer; a request without one gets a fresh id, answered the same
    way."""
    import structlog
    from structlog.testing import capture_logs

    agent = await start_agent(None, http_listen="127.0.0.1:0")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        reply = await request("POST", _infer_url(agent), body=b"{",
                              headers={**JSON, "x-request-id": "app-req-9"})
    assert reply.status == 400 and reply.headers["x-request-id"] == "app-req-9"
    refused = [entry for entry in logs if entry["event"] == "http_refused"]
    assert len(refused) == 1
    assert refused[0]["request_id"] == "app-req-9" and refused[0]["status"] == 400
    reply = await request("GET", f"http://{agent.http_address}/v2/health/live")
    assert len(reply.headers["x-request-id"]) == 16
