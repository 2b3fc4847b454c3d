"""The agent's escalation client against real servers: one stream, unary fallback."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput
from edgecloud.core.grpc_server import create_server
from edgecloud.core.tensors import InferRequest
from edgecloud.core.v2_grpc import ORDER_KEY, SERVICE_NAME, TIMEOUT_PARAM, InferenceServicer
from edgecloud.edge_agent.grpc.cloud_client import GrpcCloudClient
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

TASK = "digits"


async def ready_client(address: str, **options) -> GrpcCloudClient:
    """A client whose channel is connected (so its first request may use the stream)."""
    client = GrpcCloudClient(address, **options)
    await asyncio.wait_for(client._channel.channel_ready(), 30)
    return client


async def test_escalations_share_one_stream(start_gateway, digits_test, onnx_reference) -> None:
    """Concurrent requests go out on one stream and each gets its own answer."""
    gateway = await start_gateway()
    client = await ready_client(gateway.address)
    x, _ = digits_test
    try:
        replies = await asyncio.gather(*(
            client.infer(InferRequest(model_name=TASK, inputs={"pixels": x[i:i + 2]}), 5.0,
                         f"req-{i}") for i in range(0, 40, 2)))
    finally:
        await client.aclose()
    assert client.sent == {"stream": 20, "unary": 0}
    got = np.concatenate([r.outputs["probabilities"] for r in replies])
    np.testing.assert_allclose(got, onnx_reference("cloud", x[:40]), rtol=1e-5, atol=1e-6)


async def test_stream_errors_come_back_as_domain_errors(start_gateway, digits_test) -> None:
    """A refused stream message raises the same domain error a unary call would."""
    gateway = await start_gateway()
    client = await ready_client(gateway.address)
    try:
        with pytest.raises(InvalidInput, match="pixels"):
            await client.infer(InferRequest(model_name=TASK,
                                            inputs={"pixels": np.zeros((1, 3), np.float32)}),
                               5.0, "bad")
    finally:
        await client.aclose()
    assert client.sent["stream"] == 1


class UnaryOnly(InferenceServicer):
    """A v2 server of an older gateway: no ModelStreamInfer."""

    async def ModelStreamInfer(self, request_iterator, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        yield pb.ModelStreamInferResponse()  # never reached; makes this a stream method


async def test_falls_back_to_unary_when_the_gateway_has_no_stream(start_gateway,
                                                                  digits_test) -> None:
    """Against a gateway that refuses streams, every request is still answered (unary)."""
    gateway = await start_gateway()

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(UnaryOnly(gateway.service), server)

    server, port, _ = await create_server("127.0.0.1:0", [register], [SERVICE_NAME])
    client = await ready_client(f"127.0.0.1:{port}", clock=lambda: 0.0)  # backoff never ends
    x, _ = digits_test
    try:
        for i in range(4):
            reply = await client.infer(
                InferRequest(model_name=TASK, inputs={"pixels": x[i:i + 1]}), 5.0, f"r{i}")
            assert reply.outputs["probabilities"].shape == (1, 10)
    finally:
        await client.aclose()
        await server.stop(None)
    assert client.sent == {"stream": 1, "unary": 4}  # the stream was tried once, then left


async def test_expired_stream_message_is_dropped_before_compute(start_gateway, channels,
                                                                digits_test) -> None:
    """A stream message whose timeout_ms has run out is answered DEADLINE_EXCEEDED, with its
    id, and never reaches the model."""
    gateway = await start_gateway()
    stub = channels(gateway.address)
    x, _ = digits_test
    stream = stub.ModelStreamInfer(metadata=((ORDER_KEY, "completion"),))
    late = codec.encode_infer_request(InferRequest(model_name=TASK, inputs={"pixels": x[:1]},
                                                   id="late"))
    late.parameters[TIMEOUT_PARAM].double_param = 0.0
    await stream.write(late)
    reply = await stream.read()
    await stream.done_writing()
    assert reply.infer_response.id == "late"
    assert reply.error_message.startswith("DEADLINE_EXCEEDED")
    runs = gateway.metrics.registry.get_sample_value("edgecloud_gateway_batch_rows_count",
                                                     {"model": TASK})
    assert not runs
