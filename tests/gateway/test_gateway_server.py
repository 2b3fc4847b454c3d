"""The gateway as a real gRPC server on loopback."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb


def infer_request(x: np.ndarray, model: str = "digits") -> pb.ModelInferRequest:
    return codec.encode_infer_request(InferRequest(model_name=model, inputs={"pixels": x}))


async def test_metadata_and_readiness(start_gateway, channels) -> None:
    """ServerLive/Ready, ModelReady and ModelMetadata describe the served ONNX model."""
    gateway = await start_gateway()
    stub = channels(gateway.address)
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="digits"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="nope"))).ready
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("pixels", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 10])
    ]


async def test_inference_equals_onnxruntime(start_gateway, channels, digits_test,
                                            onnx_reference) -> None:
    """Concurrent requests are batched and each answer equals the model run directly."""
    gateway = await start_gateway()
    stub = channels(gateway.address)
    x, _ = digits_test
    replies = await asyncio.gather(*(stub.ModelInfer(infer_request(x[i:i + 3]), timeout=5)
                                     for i in range(0, 60, 3)))
    expected = onnx_reference("cloud", x[:60])
    got = np.concatenate(
        [codec.decode_infer_response(r).outputs["probabilities"] for r in replies]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"),
    [
        (lambda r: setattr(r, "model_name", "unknown"), grpc.StatusCode.NOT_FOUND, "unknown"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP99"), grpc.StatusCode.INVALID_ARGUMENT,
         "FP99"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 12),
         grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
        (lambda r: setattr(r.inputs[0], "name", "image"), grpc.StatusCode.INVALID_ARGUMENT,
         "pixels"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 63), grpc.StatusCode.INVALID_ARGUMENT,
         "pixels"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -4), grpc.StatusCode.INVALID_ARGUMENT,
         "pixels"),
        (lambda r: r.outputs.add(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
    ],
)
async def test_bad_requests_are_refused_and_server_stays_up(
    start_gateway, channels, digits_test, mutate, code, fragment
) -> None:
    """Each malformed request gets its status code and a message naming the problem;
    the next good request is served."""
    gateway = await start_gateway()
    stub = channels(gateway.address)
    x, _ = digits_test
    request = infer_request(x[:2])
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(request, timeout=5)
    assert err.value.code() == code
    assert fragment in err.value.details()
    assert (await stub.ModelInfer(infer_request(x[:1]), timeout=5)).outputs


async def test_health_and_reflection(start_gateway) -> None:
    """grpc.health.v1 reports SERVING and reflection lists the v2 service."""
    gateway = await start_gateway()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = []
        async for response in responses:
            names = [s.name for s in response.list_services_response.service]
        assert "inference.GRPCInferenceService" in names
        assert "grpc.health.v1.Health" in names


async def test_drain_finishes_in_flight_work(start_gateway, channels, digits_test) -> None:
    """On stop, requests already in flight are answered; afterwards the port refuses."""
    # A long queue delay and a large batch keep the requests waiting in the batcher.
    gateway = await start_gateway(batching={"max_batch_size": 1024, "max_queue_delay_ms": 300})
    stub = channels(gateway.address)
    x, _ = digits_test

    async def one():
        return await stub.ModelInfer(infer_request(x[:32]), timeout=5)

    in_flight = [asyncio.create_task(one()) for _ in range(8)]
    for _ in range(200):
        if gateway.service.queued_rows("digits") >= 7 * 32:
            break
        await asyncio.sleep(0.005)
    await gateway.stop(grace_s=2.0)
    done = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(r, pb.ModelInferResponse) for r in done), done
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
