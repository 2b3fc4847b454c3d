"""The one error map between domain errors and gRPC status codes.

Servers wrap every servicer method with :func:`rpc_boundary`: it takes the
request id (from ``x-request-id`` metadata, or a new one), binds it to the
call's log events, hands it to methods that take a ``request_id`` argument
(so it travels on as a value), maps
:class:`~core.errors.EdgecloudError` kinds to status codes, logs once, and
turns anything unexpected into ``INTERNAL`` carrying the request id, never
the exception text. Clients turn ``AioRpcError`` into domain errors with
:func:`from_rpc_error`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import structlog

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


def rpc_boundary(method: F) -> F:
    """Wrap a grpc.aio servicer method (unary or streaming response).

    A method whose signature has a ``request_id`` parameter gets the call's
    request id as that keyword argument.
    """
    name = method.__name__
    wants_id = "request_id" in inspect.signature(method).parameters

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = request_id_from(context)
            bind_request_id(request_id)
            try:
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
            if wants_id:
                return await method(self, request, context, request_id=request_id)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = _status_for(exc, name, request_id)
            await context.abort(code, message)

    return unary_wrapper  # type: ignore[return-value]


def from_rpc_error(exc: grpc.aio.AioRpcError, peer: str = "peer") -> EdgecloudError:
    """Turn a client-side RPC failure into the matching domain error."""
    code = exc.code()
    cls = _CODE_TO_ERROR.get(code, errors.Unavailable)
    detail = exc.details() or code.name.lower()
    return cls(f"{peer}: {code.name}: {detail}")
