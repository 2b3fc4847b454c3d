"""Building blocks every edgecloud gRPC server shares.

:func:`create_server` binds a grpc.aio server with health checking and
reflection and returns ``(server, port)``; :class:`ServerLifecycle` flips
health to NOT_SERVING and stops the server gracefully (the drain on SIGTERM).
Registrars add servicers with :func:`add_servicer`, so a request whose
bytes do not parse reaches the servicer's error boundary instead of failing
inside grpc, and a servicer may answer with a message already encoded
(``bytes``), e.g. one encoding shared by many streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgecloud.core.errors import InvalidInput
from edgecloud.core.grpc_errors import tolerant

log = structlog.get_logger("edgecloud.server")

Registrar = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Transport limits shared by agent and gateway servers."""

    max_message_bytes: int = 64 * 2**20
    """Largest request or response message accepted."""
    max_connection_age_s: float | None = None
    """Close connections after this long so a load balancer can rebalance them."""
    max_connection_age_grace_s: float = 30.0
    """Time given to RPCs on a connection past its maximum age."""
    max_concurrent_rpcs: int | None = None
    """RPCs the server runs at once (open streams included); past it new calls are
    refused with RESOURCE_EXHAUSTED. None: unlimited."""
    max_streams_per_connection: int | None = None
    """HTTP/2 streams one connection may have open at once (``grpc.max_concurrent_streams``);
    a client past it waits for a free stream. None: gRPC's default (unlimited)."""
    max_pending_rpcs: int | None = None
    """New calls the transport may hold while the server is still taking earlier ones (a
    burst: a whole fleet reconnecting at once after a restart); past it new calls are
    refused. None: gRPC's default, which starts refusing at random past 1,000 waiting calls
    and refuses every one past 3,000; the caller sees CANCELLED."""


def _channel_args(opts: ServerOptions) -> list[tuple[str, int]]:
    args = [
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if opts.max_streams_per_connection:
        args.append(("grpc.max_concurrent_streams", opts.max_streams_per_connection))
    if opts.max_pending_rpcs:
        # Soft and hard limit alike: no random refusals below the limit.
        args.append(("grpc.server.max_pending_requests", opts.max_pending_rpcs))
        args.append(("grpc.server.max_pending_requests_hard_limit", opts.max_pending_rpcs))
    if opts.max_connection_age_s:
        args.append(("grpc.max_connection_age_ms", int(opts.max_connection_age_s * 1000)))
        args.append(
            ("grpc.max_connection_age_grace_ms", int(opts.max_connection_age_grace_s * 1000))
        )
    return args


def _encoded_passes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serializer``, passing a response that is already encoded (``bytes``) through."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if message.__class__ is bytes else serializer(message)

    return serialize


class _TolerantRegistration:
    """What a generated ``add_*Servicer_to_server`` function sees as the server: it passes
    the service's handlers on with request deserializers that do not raise, and response
    serializers that take encoded messages as they are."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.registered = False

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: built again from the same handlers in :meth:`add_registered_method_handlers`."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        tolerant_handlers = {
            name: handler._replace(
                request_deserializer=tolerant(handler.request_deserializer,
                                              _message_name(handler, service, name)),
                response_serializer=_encoded_passes(handler.response_serializer))
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, tolerant_handlers),))
        self._server.add_registered_method_handlers(service, tolerant_handlers)
        self.registered = True


def _message_name(handler: grpc.RpcMethodHandler, service: str, method: str) -> str:
    owner = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else f"{service}.{method} request"


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any,
                 server: grpc.aio.Server) -> None:
    """Register ``servicer`` with its generated ``add_*Servicer_to_server`` function, its
    request deserializers made tolerant (:func:`core.grpc_errors.tolerant`); its methods
    may answer with encoded messages (``bytes``) as well as messages."""
    registration = _TolerantRegistration(server)
    add_to_server(servicer, registration)
    if not registration.registered:
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers")


def split_host_port(address: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raises InvalidInput."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInput(f"address {address!r} is not HOST:PORT")
    return host, int(port_text)


class ServerLifecycle:
    """Health status and graceful stop of one server."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                 services: Iterable[str]) -> None:
        self.server = server
        self.health = health_servicer
        self.services = tuple(services)
        self._components: set[str] = set()

    async def set_component(self, name: str, serving: bool) -> None:
        """Report a part of the process other than a served service (e.g. the agent's link
        to the fleet) as SERVING or NOT_SERVING under its own health-check name."""
        self._components.add(name)
        await self.health.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                              else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services):
            await self.health.set(name, status)

    async def drain(self, grace_s: float) -> None:
        """Not ready, let in-flight RPCs finish (up to ``grace_s``), stop."""
        await self.set_serving(False)
        for name in self._components:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)


async def create_server(
    address: str,
    registrars: Iterable[Registrar],
    service_names: Iterable[str],
    options: ServerOptions | None = None,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, ServerLifecycle]:
    """Bind a grpc.aio server on ``address`` (port 0 picks a free port).

    Adds ``grpc.health.v1`` and server reflection. Returns the started
    server, the bound port and its lifecycle handle. Must run inside the
    event loop that will serve it.
    """
    opts = options or ServerOptions()
    split_host_port(address)
    server = grpc.aio.server(options=_channel_args(opts), interceptors=list(interceptors),
                             maximum_concurrent_rpcs=opts.max_concurrent_rpcs)
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise InvalidInput(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise InvalidInput(f"cannot listen on {address}")
    await server.start()
    lifecycle = ServerLifecycle(server, health_servicer, names)
    await lifecycle.set_serving(True)
    log.info("server_started", address=address, port=port)
    return server, port, lifecycle
