"""gRPC implementation of :class:`edge_agent.escalation.CloudClient`."""

from __future__ import annotations

import grpc

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.logging import REQUEST_ID_KEY
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo, TensorSpec
from edgecloud.core.tls import open_channel
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc


class GrpcCloudClient:
    """v2 client to the gateway; reconnects by itself with backoff."""

    def __init__(self, target: str, *, max_message_bytes: int = 64 * 2**20,
                 token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
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
        """One ModelInfer on the gateway; errors come back as domain errors."""
        message = codec.encode_infer_request(request)
        try:
            reply = await self._stub.ModelInfer(
                message, timeout=timeout_s,
                metadata=((REQUEST_ID_KEY, request_id), *self._auth),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gateway") from None
        return codec.decode_infer_response(reply)

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
        """Close the channel."""
        await self._channel.close()
