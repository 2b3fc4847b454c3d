"""End to end on loopback: device client -> agent -> router -> gateway -> answer."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest, InferResponse
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.router import (
    BreakerPolicy,
    RequestContext,
    Side,
    decide,
    dump_policy,
    parse_policy,
    score_rows,
)

TASK = "digits"


async def call(stub, x: np.ndarray, deadline_s: float = 5.0, **params) -> InferResponse:
    request = codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"pixels": x}, parameters=params)
    )
    reply = await stub.ModelInfer(request, timeout=deadline_s)
    return codec.decode_infer_response(reply)


def expected_routes(digits_dir, onnx_reference, x: np.ndarray) -> list[str]:
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    confidence, predicted = score_rows(policy, onnx_reference("edge", x))
    plan = decide(policy, confidence, predicted, RequestContext(time_left_s=5.0))
    return ["cloud" if side == Side.CLOUD else "edge" for side in plan.side.tolist()]


@pytest.mark.e2e
async def test_rows_answered_where_decide_says(start_gateway, start_agent, channels,
                                               digits_dir, digits_test, onnx_reference):
    """Each row is answered at the edge or in the cloud exactly as decide() says, with
    the outputs of the model that answered it."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    stub = channels(agent.address)
    x, _ = digits_test
    sample = x[:60]
    routes = expected_routes(digits_dir, onnx_reference, sample)
    assert "edge" in routes and "cloud" in routes
    edge_out = onnx_reference("edge", sample)
    cloud_out = onnx_reference("cloud", sample)
    for i in range(len(sample)):
        answer = await call(stub, sample[i:i + 1])
        assert answer.parameters["route"] == routes[i]
        assert answer.parameters["model_version"] == "1"
        expected = edge_out[i] if routes[i] == "edge" else cloud_out[i]
        np.testing.assert_allclose(answer.outputs["probabilities"][0], expected, rtol=1e-5,
                                   atol=1e-6)
        # A string for one row as for several, so a client reads it one way.
        assert isinstance(answer.parameters["confidence"], str)
        assert 0.0 <= float(answer.parameters["confidence"]) <= 1.0


@pytest.mark.e2e
async def test_batched_request_sends_only_hard_rows(start_gateway, start_agent, channels,
                                                    digits_dir, digits_test, onnx_reference):
    """A request of N rows is routed row by row: per-row parameters, and only the hard
    rows reach the gateway."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    stub = channels(agent.address)
    x, _ = digits_test
    batch = x[:100]
    routes = expected_routes(digits_dir, onnx_reference, batch)
    answer = await call(stub, batch)
    assert answer.parameters["route"].split(",") == routes
    assert len(answer.parameters["reason"].split(",")) == 100
    assert len(answer.parameters["confidence"].split(",")) == 100
    rows_at_gateway = gateway.metrics.rows.labels(TASK)._value.get()
    assert rows_at_gateway == routes.count("cloud")
    edge_out = onnx_reference("edge", batch)
    cloud_out = onnx_reference("cloud", batch)
    expected = np.where(np.array(routes)[:, None] == "cloud", cloud_out, edge_out)
    np.testing.assert_allclose(answer.outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
async def test_gateway_down_falls_back_then_resumes(start_gateway, start_agent, channels,
                                                    tmp_path, digits_dir, digits_test,
                                                    onnx_reference):
    """With the gateway stopped, hard rows get the local answer as edge_fallback and the
    app sees no error; once the gateway is back on its address, escalation resumes."""
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    policy = policy.model_copy(update={"breaker": BreakerPolicy(failures_to_open=2,
                                                                 half_open_after_s=0.2)})
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(dump_policy(policy))
    gateway = await start_gateway()
    address = gateway.address
    agent = await start_agent(address, policies=[policy_file])
    stub = channels(agent.address)
    x, _ = digits_test
    routes = expected_routes(digits_dir, onnx_reference, x[:200])
    hard = x[[i for i, r in enumerate(routes) if r == "cloud"][:1]]
    assert (await call(stub, hard)).parameters["route"] == "cloud"

    await gateway.stop(grace_s=0.1)
    for _ in range(2):
        answer = await call(stub, hard)
        assert answer.parameters["route"] == "edge_fallback"
        np.testing.assert_allclose(answer.outputs["probabilities"][0],
                                   onnx_reference("edge", hard)[0], rtol=1e-5, atol=1e-6)
    # After two failures the breaker is open: the agent stops trying for a while.
    assert (await call(stub, hard)).parameters["reason"] == "cloud_unavailable"

    await start_gateway(listen=address)
    route = ""
    for _ in range(100):
        route = (await call(stub, hard)).parameters["route"]
        if route == "cloud":
            break
        await asyncio.sleep(0.05)
    assert route == "cloud"


@pytest.mark.e2e
async def test_route_and_threshold_overrides(start_gateway, start_agent, channels, digits_test):
    """Request parameters force a side or move the threshold for that request only."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    stub = channels(agent.address)
    x, _ = digits_test
    rows = x[:20]
    forced_cloud = await call(stub, rows, route="cloud")
    assert set(forced_cloud.parameters["route"].split(",")) == {"cloud"}
    assert set(forced_cloud.parameters["reason"].split(",")) == {"forced"}
    forced_edge = await call(stub, rows, route="edge")
    assert set(forced_edge.parameters["route"].split(",")) == {"edge"}
    everything = await call(stub, rows, confidence_threshold=1.0)
    assert set(everything.parameters["route"].split(",")) == {"cloud"}
    nothing = await call(stub, rows, confidence_threshold=0.0)
    assert set(nothing.parameters["route"].split(",")) == {"edge"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"route": "sideways"}, "route"),
        ({"route": 3}, "route"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"confidence_threshold": "high"}, "confidence_threshold"),
    ],
)
async def test_bad_parameters_are_refused(start_agent, channels, digits_test, params, fragment):
    """A bad routing parameter is INVALID_ARGUMENT naming the parameter."""
    agent = await start_agent(None)
    stub = channels(agent.address)
    x, _ = digits_test
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, x[:1], **params)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()


@pytest.mark.e2e
async def test_same_input_same_answer(start_gateway, start_agent, channels, digits_test):
    """The same input gives the same outputs and the same route on every call."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    stub = channels(agent.address)
    x, _ = digits_test
    first = await call(stub, x[:50])
    for _ in range(3):
        again = await call(stub, x[:50])
        np.testing.assert_array_equal(again.outputs["probabilities"],
                                      first.outputs["probabilities"])
        assert again.parameters["route"] == first.parameters["route"]


@pytest.mark.e2e
async def test_stream_routes_each_message(start_gateway, start_agent, channels, digits_dir,
                                          digits_test, onnx_reference):
    """ModelStreamInfer answers every message in order, routed like a ModelInfer; a bad
    message gets an error message and the stream goes on."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    stub = channels(agent.address)
    x, _ = digits_test
    rows = x[:30]
    routes = expected_routes(digits_dir, onnx_reference, rows)

    def messages():
        for i in range(len(rows)):
            yield codec.encode_infer_request(
                InferRequest(model_name=TASK, inputs={"pixels": rows[i:i + 1]}, id=str(i))
            )
            if i == 10:
                yield pb.ModelInferRequest(model_name=TASK)  # no inputs at all

    replies = [r async for r in stub.ModelStreamInfer(messages(), timeout=20)]
    assert len(replies) == len(rows) + 1
    assert replies[11].error_message.startswith("INVALID_ARGUMENT")
    good = [r for r in replies if not r.error_message]
    assert [r.infer_response.id for r in good] == [str(i) for i in range(len(rows))]
    got = [codec.decode_infer_response(r.infer_response).parameters["route"] for r in good]
    assert got == routes


@pytest.mark.e2e
async def test_edge_only_agent_answers_everything_locally(start_agent, channels, digits_test):
    """An agent without a gateway answers every row at the edge; hard rows say
    cloud_unavailable, and so does a request that forces the cloud."""
    agent = await start_agent(None)
    stub = channels(agent.address)
    x, _ = digits_test
    answer = await call(stub, x[:100])
    assert set(answer.parameters["route"].split(",")) == {"edge"}
    assert "cloud_unavailable" in answer.parameters["reason"].split(",")
    forced = await call(stub, x[:3], route="cloud")
    assert forced.parameters["route"].split(",") == ["edge"] * 3
    assert forced.parameters["reason"].split(",") == ["cloud_unavailable"] * 3


@pytest.mark.e2e
@pytest.mark.parametrize("route", ["auto", "cloud"])
async def test_zero_row_request_gets_empty_outputs(start_gateway, start_agent, channels,
                                                   route):
    """A [0, 64] request is answered by the agent and by the gateway with [0, 10] outputs,
    never INTERNAL, whether routed automatically or forced to the cloud."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    empty = np.zeros((0, 64), dtype=np.float32)
    answer = await call(channels(agent.address), empty, route=route)
    assert answer.outputs["probabilities"].shape == (0, 10)
    assert answer.parameters["route"] == ""
    request = codec.encode_infer_request(InferRequest(model_name=TASK,
                                                      inputs={"pixels": empty}))
    reply = codec.decode_infer_response(
        await channels(gateway.address).ModelInfer(request, timeout=5.0))
    assert reply.outputs["probabilities"].shape == (0, 10)
