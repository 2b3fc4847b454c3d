"""A fast answer, then a better one, end to end: a real agent and a real gateway on loopback.

A stock v2 stream client (tritonclient, in a subprocess: it registers its own
``inference.*`` messages) gets the edge answer and then the update on the same stream; a
unary client polls ``Answers.Get``; a stream client that leaves early still finds the
answer by id; a spent budget and a gateway that is down each end in a final record.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import yaml
from fleet_helpers import wait_until
from stalling_proxy import StallingProxy

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.answers.v1 import answers_pb2 as apb
from edgecloud.protos.answers.v1 import answers_pb2_grpc as apb_grpc
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecloud.router import Policy, parse_policy, score_rows

TASK = "digits"
BETTER = {"answer": "fast_then_better", "confidence_threshold": 1.0}
"""Every row escalated behind the fast answer (no row meets a threshold of 1)."""

STREAM_SCRIPT = r"""
import json, queue, sys
import numpy as np
import tritonclient.grpc as grpcclient

address, x_path = sys.argv[1], sys.argv[2]
x = np.load(x_path)
client = grpcclient.InferenceServerClient(url=address)
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
for i in range(len(x)):
    row = grpcclient.InferInput("pixels", [1, x.shape[1]], "FP32")
    row.set_data_from_numpy(x[i:i + 1])
    client.async_stream_infer("digits", [row], request_id=str(i), parameters={
        "answer": "fast_then_better", "confidence_threshold": 1.0})
plain = grpcclient.InferInput("pixels", [1, x.shape[1]], "FP32")
plain.set_data_from_numpy(x[:1])
client.async_stream_infer("digits", [plain], request_id="plain",
                          parameters={"answer": "as_usual"})
got = []
for _ in range(2 * len(x) + 1):
    result, error = answers.get(timeout=60)
    assert error is None, error
    reply = result.get_response(as_json=True)
    params = {k: next(iter(v.values())) for k, v in reply.get("parameters", {}).items()}
    got.append({"id": reply["id"], "params": params,
                "probabilities": result.as_numpy("probabilities")[0].tolist()})
client.stop_stream()
print(json.dumps(got))
"""


@pytest.mark.e2e
async def test_a_stock_stream_client_gets_the_edge_answer_then_the_update(
        start_gateway, start_agent, tmp_path, digits_test, onnx_reference):
    """tritonclient's stream: each fast_then_better request is answered from the edge model
    (in request order, with an answer id), then by an update with the same id, update=true,
    the same answer id, route=cloud and the cloud model's outputs; a request without the
    parameter gets one answer, as before."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, fleet=False)
    x, _ = digits_test
    rows = x[:4]
    x_path = tmp_path / "x.npy"
    np.save(x_path, rows)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STREAM_SCRIPT, agent.address, str(x_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, stderr.decode()
    got = json.loads(stdout)
    firsts = [m for m in got if "update" not in m["params"]]
    updates = [m for m in got if m["params"].get("update") is True]
    assert [m["id"] for m in firsts] == ["0", "1", "2", "3", "plain"]
    assert sorted(m["id"] for m in updates) == ["0", "1", "2", "3"]
    edge, cloud = onnx_reference("edge", rows), onnx_reference("cloud", rows)
    for first in firsts[:4]:
        i = int(first["id"])
        assert first["params"]["route"] == "edge" and first["params"]["better"] == "pending"
        np.testing.assert_allclose(first["probabilities"], edge[i], rtol=1e-5, atol=1e-6)
        (update,) = [m for m in updates if m["id"] == first["id"]]
        assert got.index(update) > got.index(first)
        assert update["params"]["answer_id"] == first["params"]["answer_id"]
        assert update["params"]["route"] == "cloud"
        assert update["params"]["cloud_model_version"] == "1"
        np.testing.assert_allclose(update["probabilities"], cloud[i], rtol=1e-5, atol=1e-6)
    assert "answer_id" not in firsts[4]["params"]


async def _poll(answers: apb_grpc.AnswersStub, answer_id: str,
                timeout_s: float = 20.0) -> apb.Answer:
    """Get the answer until it is no longer pending (a unary client's loop)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
        if got.state != apb.ANSWER_STATE_PENDING or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def _request(x: np.ndarray, request_id: str = "", **parameters) -> pb.ModelInferRequest:
    return codec.encode_infer_request(InferRequest(
        model_name=TASK, inputs={"pixels": x}, id=request_id, parameters=parameters))


@pytest.mark.e2e
async def test_a_unary_client_polls_and_a_stream_that_left_still_finds_its_answer(
        start_gateway, start_agent, digits_test, onnx_reference):
    """A unary ModelInfer caller polls Answers.Get by id until the cloud's answer is there
    (its hard rows kept once, when answered); a stream client that reads the fast answer
    and ends the call while the link to the gateway is held finds the cloud's answer by id
    once the link flows again."""
    gateway = await start_gateway()
    proxy = StallingProxy(gateway.address)
    try:
        agent = await start_agent(await proxy.start(), fleet=False)
        x, _ = digits_test
        async with grpc.aio.insecure_channel(agent.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = apb_grpc.AnswersStub(channel)
            reply = codec.decode_infer_response(
                await v2.ModelInfer(_request(x[:2], **BETTER), timeout=10))
            got = await _poll(answers, str(reply.parameters["answer_id"]))
            assert got.state == apb.ANSWER_STATE_ANSWERED and got.source == "cloud"
            cloud = np.frombuffer(got.outputs[0].raw, dtype="<f4").reshape(2, 10)
            np.testing.assert_allclose(cloud, onnx_reference("cloud", x[:2]), rtol=1e-5,
                                       atol=1e-6)
            await agent.ledger.flush_async()  # the two hard rows are kept once, when answered
            assert agent.ledger.stats.kept == 2

            proxy.flowing.clear()
            stream = v2.ModelStreamInfer(timeout=30)
            await stream.write(_request(x[2:3], "s1", **BETTER))
            first = await stream.read()
            answer_id = first.infer_response.parameters["answer_id"].string_param
            stream.cancel()
            assert (await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
                    ).state == apb.ANSWER_STATE_PENDING
            proxy.flowing.set()
            got = await _poll(answers, answer_id)
            assert got.state == apb.ANSWER_STATE_ANSWERED and list(got.route) == ["cloud"]
            await agent.ledger.flush_async()
            assert agent.ledger.stats.kept == 3
    finally:
        proxy.flowing.set()
        await proxy.close()


def _budget_policy(path: Path) -> Policy:
    """Every row below 0.999 escalates, and the budget (target rate 0, half a point per
    escalated row) lowers the threshold to 0.499 after the first."""
    doc = {"name": TASK, "version": "9", "score": "max_prob", "threshold": 0.999,
           "budget": {"target_rate": 0.0, "step": 0.5, "max_shift": 0.9}}
    path.write_text(yaml.safe_dump(doc))
    return parse_policy(path.read_text())


@pytest.mark.e2e
async def test_a_spent_budget_says_so_and_leaves_nothing_pending(
        start_gateway, start_agent, tmp_path, digits_test, onnx_reference):
    """With the budget spent by a first fast_then_better row, the next row the budget
    refuses is answered with better=budget_spent and its record is final at once
    (not_escalated, source edge); the first row's record ends answered by the cloud, and
    the metrics count it escalated once it is."""
    policy = _budget_policy(tmp_path / "policy.yaml")
    x, _ = digits_test
    confidence, _ = score_rows(policy, onnx_reference("edge", x))
    unsure = int(np.flatnonzero(confidence < 0.999)[0])
    middling = int(np.flatnonzero((confidence >= 0.6) & (confidence < 0.99))[0])
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, fleet=False, policies=[tmp_path / "policy.yaml"])
    async with grpc.aio.insecure_channel(agent.address) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = apb_grpc.AnswersStub(channel)
        asked = {"answer": "fast_then_better"}
        spent = codec.decode_infer_response(
            await v2.ModelInfer(_request(x[unsure:unsure + 1], **asked), timeout=10))
        assert spent.parameters["better"] == "pending"
        refused = codec.decode_infer_response(
            await v2.ModelInfer(_request(x[middling:middling + 1], **asked), timeout=10))
        assert refused.parameters["better"] == "budget_spent"
        assert refused.parameters["reason"] == "budget_exhausted"
        got = await answers.Get(apb.GetAnswerRequest(
            answer_id=str(refused.parameters["answer_id"])), timeout=10)
        assert got.state == apb.ANSWER_STATE_NOT_ESCALATED and got.source == "edge"
        assert list(got.better) == ["budget_spent"] and got.detail
        first = await _poll(answers, str(spent.parameters["answer_id"]))
        assert first.state == apb.ANSWER_STATE_ANSWERED
    await wait_until(lambda: agent.metrics.task_counts(TASK).requests == 2)
    assert agent.metrics.better_answers == {(TASK, "answered"): 1, (TASK, "not_escalated"): 1}
    assert agent.metrics.task_counts(TASK).escalated_rows == 1


def _closed_port() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.e2e
async def test_with_the_gateway_down_the_answer_ends_saying_the_cloud_failed(
        start_agent, digits_test, onnx_reference):
    """With no gateway listening, a fast_then_better row is answered at the edge; the
    stream's update says edge_fallback (cloud_failed) with the edge's outputs, and the
    record ends cloud_failed with a reason, never pending."""
    agent = await start_agent(_closed_port(), fleet=False, upload_hard_examples=False)
    x, _ = digits_test
    async with grpc.aio.insecure_channel(agent.address) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        stream = v2.ModelStreamInfer(timeout=30)
        await stream.write(_request(x[:1], "down", **BETTER))
        await stream.done_writing()
        first, update = await stream.read(), await stream.read()
        assert await stream.read() is grpc.aio.EOF
        for message in (first, update):
            assert message.error_message == ""
        reply = codec.decode_infer_response(update.infer_response)
        assert reply.id == "down" and reply.parameters["update"] is True
        assert reply.parameters["route"] == "edge_fallback"
        assert reply.parameters["reason"] == "cloud_failed"
        np.testing.assert_allclose(reply.outputs["probabilities"],
                                   onnx_reference("edge", x[:1]), rtol=1e-5, atol=1e-6)
        got = await _poll(apb_grpc.AnswersStub(channel), str(reply.parameters["answer_id"]))
        assert got.state == apb.ANSWER_STATE_CLOUD_FAILED and got.detail
        assert list(got.route) == ["edge_fallback"]


@pytest.mark.e2e
async def test_completion_order_streams_get_updates_too(start_gateway, start_agent,
                                                        digits_test, onnx_reference):
    """A stream that asks for answers as they are ready gets each fast answer and each
    update (matched by id), and ends once the client is done writing and all are sent."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, fleet=False)
    x, _ = digits_test
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            timeout=30, metadata=(("x-edgecloud-stream-order", "completion"),))
        for i in range(3):
            await stream.write(_request(x[i:i + 1], f"c{i}", **BETTER))
        await stream.done_writing()
        replies = []
        while (message := await stream.read()) is not grpc.aio.EOF:
            assert message.error_message == ""
            replies.append(codec.decode_infer_response(message.infer_response))
    assert len(replies) == 6
    cloud = onnx_reference("cloud", x[:3])
    for i in range(3):
        first, update = [r for r in replies if r.id == f"c{i}"]
        assert "update" not in first.parameters and update.parameters["update"] is True
        assert update.parameters["answer_id"] == first.parameters["answer_id"]
        np.testing.assert_allclose(update.outputs["probabilities"][0], cloud[i], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.e2e
async def test_bad_or_unservable_requests_for_a_better_answer(start_agent, digits_test):
    """route=edge with answer=fast_then_better is INVALID_ARGUMENT (on a stream: an error
    message, and the stream goes on); an agent without a gateway answers at the edge with
    better=cloud_unavailable and a record final at once."""
    agent = await start_agent(None)
    x, _ = digits_test
    async with grpc.aio.insecure_channel(agent.address) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await v2.ModelInfer(_request(x[:1], answer="fast_then_better", route="edge"),
                                timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "route=edge" in refused.value.details()
        stream = v2.ModelStreamInfer(timeout=30)
        await stream.write(_request(x[:1], "bad", answer="fast_then_better", route="edge"))
        await stream.write(_request(x[:2], "alone", **BETTER))
        await stream.done_writing()
        bad, alone = await stream.read(), await stream.read()
        assert await stream.read() is grpc.aio.EOF
        assert bad.error_message.startswith("INVALID_ARGUMENT")
        reply = codec.decode_infer_response(alone.infer_response)
        assert reply.parameters["better"] == "cloud_unavailable,cloud_unavailable"
        got = await apb_grpc.AnswersStub(channel).Get(
            apb.GetAnswerRequest(answer_id=str(reply.parameters["answer_id"])), timeout=10)
        assert got.state == apb.ANSWER_STATE_NOT_ESCALATED
        assert list(got.better) == ["cloud_unavailable"] * 2


@pytest.mark.e2e
async def test_a_rest_caller_gets_the_fast_answer_and_polls_by_id(start_gateway, start_agent,
                                                                  digits_test, onnx_reference):
    """v2 REST: POST .../infer with answer=fast_then_better answers from the edge with an
    answer id; GET /v2/answers/{id} gives the record until it is the cloud's answer."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, fleet=False, http_listen="127.0.0.1:0")
    x, _ = digits_test
    body = {"id": "rest-1", "parameters": BETTER,
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64],
                        "data": x[:2].ravel().tolist()}]}
    base = f"http://{agent.http_address}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v2/models/{TASK}/infer", json=body) as response:
            assert response.status == 200
            fast = await response.json()
        assert fast["parameters"]["better"] == "pending,pending"
        edge = np.array(fast["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
        np.testing.assert_allclose(edge, onnx_reference("edge", x[:2]), rtol=1e-5, atol=1e-6)
        deadline = time.monotonic() + 20
        while True:
            async with session.get(f"{base}/v2/answers/{fast['parameters']['answer_id']}"
                                   ) as response:
                assert response.status == 200
                doc = await response.json()
            if doc["state"] != "pending" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert (doc["state"], doc["source"], doc["answered_by"]) == ("answered", "cloud",
                                                                 "digits:1")
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]),
                               onnx_reference("cloud", x[:2]), rtol=1e-5, atol=1e-6)
