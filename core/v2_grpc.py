"""The Open Inference Protocol v2 gRPC servicer, shared by agent and gateway.

A thin shell over one data plane: each method converts the request with
``core.codec``, awaits one domain call and converts the answer back. An answer
that a better one will follow (``InferResponse.update``) is followed on a
stream by a further message with the same ``id`` once the update is ready; the
stream ends only when those are sent, or when the client ends it. Errors
are mapped in :func:`core.grpc_errors.rpc_boundary`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc
import structlog

from edgecloud.core import codec
from edgecloud.core.errors import EdgecloudError, InvalidInput
from edgecloud.core.grpc_errors import KIND_TO_CODE, Undecodable, rpc_boundary
from edgecloud.core.grpc_server import add_servicer
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.v2")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_WINDOW = 32
"""Requests of one stream processed at the same time (answers keep their order)."""
UNORDERED_STREAM_WINDOW = 512
"""Requests of one stream processed at the same time when answers may come as they are
ready; past it the server reads no more (HTTP/2 flow control holds the sender back)."""
TIMEOUT_PARAM = "timeout_ms"
"""Request parameter (milliseconds, int or float): the time the sender still gives one
message of a stream, from when the server reads it. The message is dropped before compute
once it runs out. It travels as a duration, not a point in time, so the sender's and the
server's clocks need not agree."""
ORDER_KEY = "x-edgecloud-stream-order"
"""Stream metadata: ``completion`` asks for each answer as soon as it is ready (matched to
its request by ``id``), instead of in request order (the default, as stock clients expect)."""


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
        parameters=({"execution_provider": pb.ModelParameter(string_value=info.execution_provider)}
                    if info.execution_provider else {}),
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
                          request_id: str, later: Callable[[Awaitable[InferResponse]], None]
                          ) -> pb.ModelStreamInferResponse:
        """One stream message, answered like a ModelInfer call: errors become
        ``error_message`` (with the request's ``id``), and the stream goes on.

        ``time_left_s`` is what is left of the stream's own deadline when the
        message was read; the message's ``timeout_ms`` parameter shortens it.
        An answer that a better one will follow hands its update to ``later``.
        """
        try:
            if request.__class__ is Undecodable:
                raise request.error()
            decoded = codec.decode_infer_request(
                request, max_request_bytes=self._max_request_bytes
            )
            timeout_ms = decoded.parameters.get(TIMEOUT_PARAM)
            if timeout_ms is not None:
                if type(timeout_ms) not in (int, float):
                    raise InvalidInput(f"parameter {TIMEOUT_PARAM!r} must be a number")
                own = timeout_ms / 1000.0
                time_left_s = own if time_left_s is None else min(own, time_left_s)
            answer = await self._plane.infer(decoded, time_left_s,
                                             f"{request_id}-{decoded.id}" if decoded.id
                                             else request_id)
            if answer.update is not None:
                later(answer.update)
        except EdgecloudError as exc:
            code = KIND_TO_CODE[exc.kind]
            log.info("stream_request_refused", code=code.name, error=exc.message)
            return pb.ModelStreamInferResponse(error_message=f"{code.name}: {exc.message}",
                                               infer_response=pb.ModelInferResponse(
                                                   id=_message_id(request)))
        except Exception:
            log.exception("stream_request_crashed")
            return pb.ModelStreamInferResponse(error_message="INTERNAL: internal error",
                                               infer_response=pb.ModelInferResponse(
                                                   id=_message_id(request)))
        return pb.ModelStreamInferResponse(infer_response=codec.encode_infer_response(answer))

    @rpc_boundary(per_message=True)  # a message that does not parse is answered like a bad one
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context, request_id: str
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        order = dict(context.invocation_metadata() or ()).get(ORDER_KEY)
        if order == "completion":
            async for reply in self._answer_as_ready(request_iterator, context, request_id):
                yield reply
            return
        pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(STREAM_WINDOW)
        updates = _Updates()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._answer_one(
                        request, context.time_remaining(), request_id, updates.add))
                    await pending.put(task)
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        getter: asyncio.Future | None = None
        try:
            while True:
                if updates.ready:  # sent before the next answer (more may come meanwhile)
                    for reply in updates.take():
                        yield reply
                    continue
                if updates.waiting:  # answers to come: wait for a request or an update
                    getter = getter or asyncio.ensure_future(pending.get())
                    await updates.wait(getter)
                    if not getter.done():
                        continue
                if getter is not None:  # a get already under way takes the next request
                    task, getter = await getter, None
                else:
                    task = await pending.get()
                if task is None:
                    break
                yield await task
            await reader
            while updates.waiting or updates.ready:  # the better answers still to come
                for reply in updates.take():
                    yield reply
                if updates.waiting:
                    await updates.wait()
        finally:
            reader.cancel()
            if getter is not None:  # a request it took is cancelled like the ones queued
                if getter.done() and not getter.cancelled() and getter.result() is not None:
                    getter.result().cancel()
                getter.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            updates.cancel()
            await asyncio.gather(reader, *updates.jobs, return_exceptions=True)

    async def _answer_as_ready(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context, request_id: str
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers in completion order, at most UNORDERED_STREAM_WINDOW at a time."""
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(UNORDERED_STREAM_WINDOW)
        running: set[asyncio.Task] = set()

        def finished(task: asyncio.Task) -> None:
            running.discard(task)
            window.release()
            if not task.cancelled():
                done.put_nowait(task.result())

        def update_sent(job: asyncio.Task) -> None:
            running.discard(job)
            if not job.cancelled() and job.exception() is None:
                done.put_nowait(job.result())

        def later(update: Awaitable[InferResponse]) -> None:
            job = asyncio.ensure_future(_encoded_update(update))
            running.add(job)
            job.add_done_callback(update_sent)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(
                        self._answer_one(request, context.time_remaining(), request_id, later))
                    running.add(task)
                    task.add_done_callback(finished)
            finally:
                while running:  # answer what was read (and its updates) before ending
                    await asyncio.wait(set(running))
                done.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await done.get()) is not None:
                yield reply
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)


async def _encoded_update(update: Awaitable[InferResponse]) -> pb.ModelStreamInferResponse:
    """The stream message of an update (shielded: a stream that ends does not cancel the
    work behind it, which still writes the answer by id)."""
    answer = await asyncio.shield(update)
    return pb.ModelStreamInferResponse(infer_response=codec.encode_infer_response(answer))


class _Updates:
    """The better answers one ordered stream still owes, sent as each arrives."""

    def __init__(self) -> None:
        self.jobs: set[asyncio.Task] = set()
        """Updates awaited."""
        self.ready: list[pb.ModelStreamInferResponse] = []
        """Updates arrived and not yet sent."""

    @property
    def waiting(self) -> bool:
        """True while an update is awaited."""
        return bool(self.jobs)

    def add(self, update: Awaitable[InferResponse]) -> None:
        job = asyncio.ensure_future(_encoded_update(update))
        self.jobs.add(job)
        job.add_done_callback(self._arrived)

    def _arrived(self, job: asyncio.Task) -> None:
        self.jobs.discard(job)
        if not job.cancelled() and job.exception() is None:
            self.ready.append(job.result())

    def take(self) -> list[pb.ModelStreamInferResponse]:
        ready, self.ready = self.ready, []
        return ready

    async def wait(self, *others: asyncio.Future) -> None:
        """Until an update arrives or one of ``others`` is done."""
        await asyncio.wait({*self.jobs, *others}, return_when=asyncio.FIRST_COMPLETED)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()


def _message_id(request: pb.ModelInferRequest | Undecodable) -> str:
    """The id an answer to a stream message carries (none for bytes that did not parse)."""
    return "" if request.__class__ is Undecodable else request.id


def register(plane: DataPlane, max_request_bytes: int = 64 * 2**20):
    """A registrar for :func:`core.grpc_server.create_server`."""

    def add(server: grpc.aio.Server) -> None:
        add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server,
                     InferenceServicer(plane, max_request_bytes), server)

    return add
