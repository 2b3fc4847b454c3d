"""The Open Inference Protocol v2 gRPC servicer, shared by agent and gateway.

A thin shell over one data plane: each method converts the request with
``core.codec``, awaits one domain call and converts the answer back. Errors
are mapped in :func:`core.grpc_errors.rpc_boundary`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
import structlog

from edgecloud.core import codec
from edgecloud.core.errors import EdgecloudError
from edgecloud.core.grpc_errors import KIND_TO_CODE, Undecodable, rpc_boundary
from edgecloud.core.grpc_server import add_servicer
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.v2")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_WINDOW = 32
"""Requests of one stream processed at the same time (answers keep their order)."""


class DataPlane(Protocol):
    """What a v2 server needs from its domain."""

    server_name: str
    server_version: str

    @property
    def ready(self) -> bool: ...

    def model_ready(self, name: str, version: str = "") -> bool: ...

    def metadata(self, name: str, version: str = "") -> ModelInfo: ...

    async def infer(
        self, request: InferRequest, time_left_s: float | None = None, request_id: str = ""
    ) -> InferResponse: ...


def _tensor_metadata(specs) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
        for s in specs
    ]


_CONFIG_TYPES = {
    "BOOL": pb.TYPE_BOOL, "UINT8": pb.TYPE_UINT8, "UINT16": pb.TYPE_UINT16,
    "UINT32": pb.TYPE_UINT32, "UINT64": pb.TYPE_UINT64, "INT8": pb.TYPE_INT8,
    "INT16": pb.TYPE_INT16, "INT32": pb.TYPE_INT32, "INT64": pb.TYPE_INT64,
    "FP16": pb.TYPE_FP16, "FP32": pb.TYPE_FP32, "FP64": pb.TYPE_FP64,
    "BYTES": pb.TYPE_STRING, "BF16": pb.TYPE_BF16,
}
"""v2 datatype -> Triton's model-configuration data type."""


def model_config(info: ModelInfo) -> pb.ModelConfig:
    """What Triton's ModelConfig answers for a model: with a max batch size, the
    dimensions leave out the batch dimension."""
    skip = 1 if info.max_batch_size > 0 else 0
    return pb.ModelConfig(
        name=info.name,
        platform=info.platform,
        backend="onnxruntime",
        max_batch_size=info.max_batch_size,
        input=[pb.ModelInput(name=s.name, data_type=_CONFIG_TYPES.get(s.datatype, 0),
                             dims=s.shape[skip:]) for s in info.inputs],
        output=[pb.ModelOutput(name=s.name, data_type=_CONFIG_TYPES.get(s.datatype, 0),
                               dims=s.shape[skip:]) for s in info.outputs],
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """v2 ``inference.GRPCInferenceService`` over a :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, max_request_bytes: int = 64 * 2**20) -> None:
        self._plane = plane
        self._max_request_bytes = max_request_bytes

    @rpc_boundary
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc_boundary
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._plane.ready)

    @rpc_boundary
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @rpc_boundary
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=self._plane.server_name, version=self._plane.server_version, extensions=[]
        )

    @rpc_boundary
    async def ModelMetadata(self, request, context):
        info = self._plane.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=list(info.versions),
            platform=info.platform,
            inputs=_tensor_metadata(info.inputs),
            outputs=_tensor_metadata(info.outputs),
        )

    @rpc_boundary
    async def ModelConfig(self, request, context):
        info = self._plane.metadata(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(info))

    @rpc_boundary
    async def ModelInfer(self, request, context, request_id: str):
        decoded = codec.decode_infer_request(request, max_request_bytes=self._max_request_bytes)
        answer = await self._plane.infer(decoded, context.time_remaining(), request_id)
        return codec.encode_infer_response(answer)

    async def _answer_one(self, request: pb.ModelInferRequest, time_left_s: float | None,
                          request_id: str) -> pb.ModelStreamInferResponse:
        """One stream message: errors become ``error_message``, the stream goes on."""
        try:
            if request.__class__ is Undecodable:
                raise request.error()
            decoded = codec.decode_infer_request(
                request, max_request_bytes=self._max_request_bytes
            )
            answer = await self._plane.infer(decoded, time_left_s,
                                             f"{request_id}-{decoded.id}" if decoded.id
                                             else request_id)
        except EdgecloudError as exc:
            code = KIND_TO_CODE[exc.kind]
            log.info("stream_request_refused", code=code.name, error=exc.message)
            return pb.ModelStreamInferResponse(error_message=f"{code.name}: {exc.message}")
        except Exception:
            log.exception("stream_request_crashed")
            return pb.ModelStreamInferResponse(error_message="INTERNAL: internal error")
        return pb.ModelStreamInferResponse(infer_response=codec.encode_infer_response(answer))

    @rpc_boundary(per_message=True)  # a message that does not parse is answered like a bad one
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context, request_id: str
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._answer_one(request, None, request_id))
                    await pending.put(task)
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                task = await pending.get()
                if task is None:
                    break
                yield await task
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def register(plane: DataPlane, max_request_bytes: int = 64 * 2**20):
    """A registrar for :func:`core.grpc_server.create_server`."""

    def add(server: grpc.aio.Server) -> None:
        add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server,
                     InferenceServicer(plane, max_request_bytes), server)

    return add
