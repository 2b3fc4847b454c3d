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
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc


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


async def test_batching_limits_per_model(start_gateway, channels, digits_test,
                                         onnx_reference) -> None:
    """A model's own batching limits apply: larger requests are split, never run whole,
    and one too large for its queue is refused with INVALID_ARGUMENT."""
    gateway = await start_gateway(batching={"max_batch_size": 64, "max_queue_rows": 100,
                                            "models": {"digits": {"max_batch_size": 4}}})
    stub = channels(gateway.address)
    config = await stub.ModelConfig(pb.ModelConfigRequest(name="digits"))
    assert config.config.max_batch_size == 4
    x, _ = digits_test
    reply = await stub.ModelInfer(infer_request(x[:10]), timeout=5)
    np.testing.assert_allclose(codec.decode_infer_response(reply).outputs["probabilities"],
                               onnx_reference("cloud", x[:10]), rtol=1e-5, atol=1e-6)
    sample = gateway.metrics.registry.get_sample_value
    runs = {"model": "digits"}
    assert sample("edgecloud_gateway_batch_rows_sum", runs) == 10
    assert sample("edgecloud_gateway_batch_rows_count", runs) == 3  # 4 + 4 + 2
    assert sample("edgecloud_gateway_batch_rows_bucket", {**runs, "le": "4.0"}) == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(infer_request(np.zeros((101, 64), np.float32)), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100" in err.value.details()


async def test_server_limits_concurrent_calls(start_gateway, digits_test) -> None:
    """Past max_concurrent_rpcs a call is refused with RESOURCE_EXHAUSTED; past the
    per-connection stream limit a call waits for a free stream on that connection."""
    gateway = await start_gateway(max_concurrent_rpcs=2, max_streams_per_connection=1)
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    async with (grpc.aio.insecure_channel(gateway.address, options=options) as first,
                grpc.aio.insecure_channel(gateway.address, options=options) as second,
                grpc.aio.insecure_channel(gateway.address, options=options) as third):
        x, _ = digits_test
        streams = [pb_grpc.GRPCInferenceServiceStub(c).ModelStreamInfer() for c in
                   (first, second)]
        for stream in streams:  # each holds a call open on its own connection
            await stream.write(infer_request(x[:1]))
            assert not (await stream.read()).error_message
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(third).ModelInfer(infer_request(x[:1]),
                                                                     timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(first).ModelInfer(infer_request(x[:1]),
                                                                     timeout=1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # never got a stream
        for stream in streams:
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF
        reply = await pb_grpc.GRPCInferenceServiceStub(first).ModelInfer(
            infer_request(x[:1]), timeout=5)
        assert reply.outputs


async def test_model_config_names_the_execution_provider_a_model_got(start_gateway,
                                                                     channels) -> None:
    """A model asking for CUDA first on a machine without it runs on CPU, and ModelConfig's
    `execution_provider` parameter says so (v2 ModelMetadata has no field for it)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    gateway = await start_gateway(execution_providers={
        "digits": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    stub = channels(gateway.address)
    config = await stub.ModelConfig(pb.ModelConfigRequest(name="digits"), timeout=5)
    assert config.config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=5)
    assert metadata.platform == "onnxruntime_onnx"
