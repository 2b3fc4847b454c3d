"""The one error map between domain errors and gRPC status codes.

Servers wrap every servicer method with :func:`rpc_boundary`: it takes the
request id (from ``x-request-id`` metadata, or a new one), binds it to the
call's log events, hands it to methods that take a ``request_id`` argument
(so it travels on as a value), maps
:class:`~core.errors.EdgecloudError` kinds to status codes, logs once, and
turns anything unexpected into ``INTERNAL`` carrying the request id, never
the exception text. Clients turn ``AioRpcError`` into domain errors with
:func:`from_rpc_error`.

A request whose bytes do not parse as the method's message never reaches
the servicer as an exception from grpc's own deserializer (which would
answer ``UNKNOWN`` with the parser's text on unary calls, ``INTERNAL`` on
streams): servers register their handlers with :func:`tolerant` request
deserializers (``core.grpc_server.add_servicer``), which hand the method an
:class:`Undecodable` in place of the message, and the boundary refuses it
with ``INVALID_ARGUMENT`` naming the message type, logged once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from edgecloud.core import errors
from edgecloud.core.errors import EdgecloudError, ErrorKind
from edgecloud.core.logging import REQUEST_ID_KEY, bind_request_id, new_request_id

log = structlog.get_logger("edgecloud.rpc")

KIND_TO_CODE: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

_CODE_TO_ERROR: dict[grpc.StatusCode, type[EdgecloudError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}

F = TypeVar("F", bound=Callable[..., Any])


class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type
        """Full name of the message the bytes should have held."""

    def error(self) -> errors.InvalidInput:
        """What the caller is told (the parser's own text says nothing more useful)."""
        return errors.InvalidInput(
            f"request is not a valid {self.message_type} message (its bytes do not parse)")


def tolerant(deserializer: Callable[[bytes], Any] | None,
             message_type: str) -> Callable[[bytes], Any]:
    """``deserializer``, answering an :class:`Undecodable` instead of raising DecodeError."""
    parse = deserializer if deserializer is not None else bytes

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Undecodable(message_type)

    return deserialize


async def _checked(messages: Any) -> Any:
    """A request stream that raises InvalidInput at the first message that did not parse."""
    async for message in messages:
        if message.__class__ is Undecodable:
            raise message.error()
        yield message


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    """The caller's request id from metadata, or a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return new_request_id()


def _status_for(exc: BaseException, method: str, request_id: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, EdgecloudError):
        code = KIND_TO_CODE[exc.kind]
        if exc.kind is ErrorKind.INTERNAL:
            log.error("rpc_failed", method=method, kind=exc.kind.value, error=exc.message)
            return code, f"internal error (request id {request_id})"
        log.info("rpc_refused", method=method, code=code.name, error=exc.message)
        return code, exc.message
    log.exception("rpc_crashed", method=method)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"


def rpc_boundary(method: F | None = None, *, per_message: bool = False) -> Any:
    """Wrap a grpc.aio servicer method (unary or streaming request and response).

    A method whose signature has a ``request_id`` parameter gets the call's
    request id as that keyword argument. A request that did not parse is
    refused with ``INVALID_ARGUMENT`` before the method runs; on a request
    stream, the first message that did not parse ends the call with it,
    unless ``per_message`` (``@rpc_boundary(per_message=True)``): then the
    method receives the :class:`Undecodable` items and answers each itself.
    """
    if method is None:
        return functools.partial(rpc_boundary, per_message=per_message)
    name = method.__name__
    wants_id = "request_id" in inspect.signature(method).parameters

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = request_id_from(context)
            bind_request_id(request_id)
            try:
                request = _parsed(request, per_message)
                items = (method(self, request, context, request_id=request_id) if wants_id
                         else method(self, request, context))
                async for item in items:
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code, message = _status_for(exc, name, request_id)
                await context.abort(code, message)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = request_id_from(context)
        bind_request_id(request_id)
        try:
            request = _parsed(request, per_message)
            if wants_id:
                return await method(self, request, context, request_id=request_id)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = _status_for(exc, name, request_id)
            await context.abort(code, message)

    return unary_wrapper  # type: ignore[return-value]


def _parsed(request: Any, per_message: bool) -> Any:
    """The request as the method takes it: refused when it did not parse, a request stream
    checked message by message."""
    if request.__class__ is Undecodable:
        raise request.error()
    if per_message or isinstance(request, Message) or not hasattr(request, "__aiter__"):
        return request  # a message (the isinstance check first: it is the cheap one)
    return _checked(request)


def from_rpc_error(exc: grpc.aio.AioRpcError, peer: str = "peer") -> EdgecloudError:
    """Turn a client-side RPC failure into the matching domain error."""
    code = exc.code()
    cls = _CODE_TO_ERROR.get(code, errors.Unavailable)
    detail = exc.details() or code.name.lower()
    return cls(f"{peer}: {code.name}: {detail}")
