"""gRPC implementation of :class:`edge_agent.escalation.CloudClient`.

Escalations travel on long-lived ``ModelStreamInfer`` streams, one per
address the gateway target stands for (a balancer's one address: one
stream; a name with several addresses or an ``ipv4:``/``ipv6:`` list: one
each, placed by the channel's round robin and taken in turn): each message
carries its own id (answers come back as they are ready and are matched by
it) and its time left as the ``timeout_ms`` parameter, so the gateway drops
it before compute once it is too late. When no stream is available (the
connection is not up, the gateway refuses streams, or a stream just failed
and is backing off) a request goes as a unary ``ModelInfer``; a request
whose stream is lost while it waits is sent again as a unary call if time is
left.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import structlog

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import DeadlineExceeded, EdgecloudError, Unavailable
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.logging import REQUEST_ID_KEY, new_request_id
from edgecloud.core.targets import parse_target
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo, TensorSpec
from edgecloud.core.tls import open_channel
from edgecloud.core.v2_grpc import ORDER_KEY, TIMEOUT_PARAM
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.agent.cloud")

MAX_STREAMS = 16
"""Most escalation streams kept open at once, whatever the gateway name resolves to."""
RECOUNT_S = 60.0
"""How often a gateway name's addresses are counted again (replicas come and go)."""
STREAM_BACKOFF_S = (0.5, 30.0)
"""After a stream fails without answering anything, unary calls for this long (doubling
from the first value up to the second) before a new stream is tried."""


class _StreamLost(Exception):
    """The stream ended before this message was answered."""


def _stream_error(message: str, peer: str) -> EdgecloudError:
    """The domain error for a stream answer's ``error_message`` (``CODE: detail``)."""
    name, _, detail = message.partition(": ")
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
    return from_rpc_error(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                               detail or message), peer)


class _EscalationStream:
    """One ``ModelStreamInfer`` call: messages out through a queue, answers in by id."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, metadata: tuple) -> None:
        self._outbox: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.answered = False
        self.failure: grpc.StatusCode | None = None
        self._call = stub.ModelStreamInfer(self._messages(), metadata=metadata)
        self._reader = asyncio.create_task(self._read(), name="escalation-stream")

    @property
    def open(self) -> bool:
        return not self._reader.done()

    async def _messages(self):
        while (message := await self._outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                future = self._pending.pop(reply.infer_response.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
                self.answered = True
        except grpc.aio.AioRpcError as exc:
            self.failure = exc.code()
        finally:
            if self.failure is None and not self.answered:
                self.failure = grpc.StatusCode.UNAVAILABLE
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_StreamLost())
            self._pending.clear()

    async def send(self, message: pb.ModelInferRequest, timeout_s: float,
                   request_id: str) -> pb.ModelStreamInferResponse:
        """Send one message and wait (at most ``timeout_s``) for its answer."""
        message.id = f"{next(self._ids)}/{request_id}" if request_id else str(next(self._ids))
        message.parameters[TIMEOUT_PARAM].double_param = timeout_s * 1000.0
        future = asyncio.get_running_loop().create_future()
        self._pending[message.id] = future
        self._outbox.put_nowait(message)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._pending.pop(message.id, None)

    async def aclose(self) -> None:
        self._outbox.put_nowait(None)
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class GrpcCloudClient:
    """v2 client to the gateway; reconnects by itself with backoff."""

    def __init__(self, target: str, *, max_message_bytes: int = 64 * 2**20,
                 token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 stream: bool = True, clock=time.monotonic) -> None:
        self.target = target
        self._use_stream = stream
        self._clock = clock
        self._target = parse_target(target)
        self._streams: list[_EscalationStream] = []
        self._turn = 0
        self._width = min(MAX_STREAMS, len(self._target.hosts)) if self._target.listed else 1
        """Streams to keep open: one per address of the target."""
        self._counted_at: float | None = None
        self._counting: asyncio.Task | None = None
        self._stream_paused_until = 0.0
        self._stream_backoff_s = STREAM_BACKOFF_S[0]
        self.sent = {"stream": 0, "unary": 0}
        """Requests sent each way (a stream request sent again as unary counts twice)."""
        self._auth = call_metadata(token)
        self._channel = open_channel(
            target,
            credentials,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                # At most a second between connection attempts while the gateway is
                # away: its return (the channel READY again) is what lets an open
                # breaker probe at once, so escalations resume within ~2 s.
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.enable_retries", 0),
            ],
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._was_up: bool | None = None

    async def infer(
        self, request: InferRequest, timeout_s: float, request_id: str
    ) -> InferResponse:
        """One request to the gateway, on the stream when it is up, else a unary call;
        errors come back as domain errors."""
        message = codec.encode_infer_request(request)
        stream = self._stream_for_use() if self._use_stream else None
        if stream is not None:
            started = self._clock()
            self.sent["stream"] += 1
            try:
                reply = await stream.send(message, timeout_s, request_id)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"gateway: no answer within {timeout_s * 1000:.0f} ms") from None
            except _StreamLost:
                timeout_s -= self._clock() - started
                if timeout_s <= 0:
                    raise Unavailable("gateway: the stream ended before the answer") from None
                message = codec.encode_infer_request(request)  # the sent one is the stream's
            else:
                if reply.error_message:
                    raise _stream_error(reply.error_message, "gateway")
                return codec.decode_infer_response(reply.infer_response)
        self.sent["unary"] += 1
        try:
            reply = await self._stub.ModelInfer(
                message, timeout=timeout_s,
                metadata=((REQUEST_ID_KEY, request_id), *self._auth),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None
        return codec.decode_infer_response(reply)

    def _stream_for_use(self) -> _EscalationStream | None:
        """A new stream while fewer are open than the target has addresses (and the
        connection is up), else the open streams in turn, or None (go unary)."""
        streams = []
        for stream in self._streams:
            if stream.open:
                streams.append(stream)
            else:
                self._stream_lost(stream)
        self._streams = streams
        if (len(streams) < self._stream_width() and self._clock() >= self._stream_paused_until
                and self._channel.get_state(try_to_connect=True)
                is grpc.ChannelConnectivity.READY):
            metadata = ((REQUEST_ID_KEY, new_request_id()), (ORDER_KEY, "completion"),
                        *self._auth)
            stream = _EscalationStream(self._stub, metadata)
            streams.append(stream)
            return stream
        if not streams:
            return None
        self._turn = (self._turn + 1) % len(streams)
        return streams[self._turn]

    def _stream_width(self) -> int:
        """How many streams to keep open; a name's addresses are counted in the background
        on first use and every ``RECOUNT_S`` after."""
        if self._target.listed or (self._counting is not None and not self._counting.done()):
            return self._width
        now = self._clock()
        if self._counted_at is None or now - self._counted_at >= RECOUNT_S:
            self._counted_at = now
            self._counting = asyncio.ensure_future(self._count_addresses())
        return self._width

    async def _count_addresses(self) -> None:
        self._width = min(MAX_STREAMS, await self._target.count_addresses())

    def _stream_lost(self, stream: _EscalationStream) -> None:
        """Back off (unary calls meanwhile) when a stream failed before answering anything."""
        if stream.answered:
            self._stream_backoff_s = STREAM_BACKOFF_S[0]
            return
        self._stream_paused_until = self._clock() + self._stream_backoff_s
        log.info("escalation_stream_failed", code=getattr(stream.failure, "name", None),
                 unary_for_s=self._stream_backoff_s)
        self._stream_backoff_s = min(self._stream_backoff_s * 2, STREAM_BACKOFF_S[1])

    async def metadata(self, model_name: str, timeout_s: float) -> ModelInfo:
        """ModelMetadata of ``model_name`` on the gateway."""
        try:
            reply = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model_name), timeout=timeout_s, metadata=self._auth
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None

        def specs(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return ModelInfo(reply.name, tuple(reply.versions), reply.platform,
                         specs(reply.inputs), specs(reply.outputs))

    async def reconnected(self) -> None:
        """Wait for the channel to become READY after it was not (see ``CloudClient``).

        Asks the channel to connect while waiting, so an idle or failed
        connection is retried (with the channel's backoff) rather than left
        until the next escalation.
        """
        state = self._channel.get_state(try_to_connect=True)
        if self._was_up is None:
            self._was_up = state is grpc.ChannelConnectivity.READY
        while True:
            up = state is grpc.ChannelConnectivity.READY
            if up and not self._was_up:
                self._was_up = True
                return
            self._was_up = up
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)

    async def aclose(self) -> None:
        """Close the streams and the channel."""
        if self._counting is not None:
            self._counting.cancel()
            await asyncio.gather(self._counting, return_exceptions=True)
        streams, self._streams = self._streams, []
        for stream in streams:
            await stream.aclose()
        await self._channel.close()
