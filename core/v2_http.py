"""The Open Inference Protocol v2 over HTTP/REST, shared by agent and gateway.

The REST twin of ``core.v2_grpc``: each route converts the request with
``core.v2_rest``, awaits one call of the same :class:`~core.v2_grpc.DataPlane` and
converts the answer back. Routes, as KServe and Triton define them:

    GET  /v2/health/live                       GET  /v2
    GET  /v2/health/ready                      GET  /v2/models/{name}[/versions/{v}]
    GET  /v2/models/{name}[/versions/{v}]/ready  GET  /v2/models/{name}[/versions/{v}]/config
    POST /v2/models/{name}[/versions/{v}]/infer

One boundary (:func:`_boundary`) per route, as :func:`core.grpc_errors.rpc_boundary`
on gRPC: it takes the request id from the ``x-request-id`` header (or makes one),
binds it to the log events of the request and returns it in the same header, checks
the caller's role with :func:`core.http_auth.admit` when the server asks for one (the
roles of the route's gRPC method: one rule for both transports), and maps domain
errors to HTTP statuses with the v2 error document ``{"error": "..."}``:

    INVALID_ARGUMENT 400    NOT_FOUND 404    FAILED_PRECONDITION, ALREADY_EXISTS 409
    UNAUTHENTICATED 401    PERMISSION_DENIED 403
    RESOURCE_EXHAUSTED 429 (the caller should slow down: load shed, escalation limit)
    UNAVAILABLE 503    DEADLINE_EXCEEDED 504     INTERNAL 500 (with the request id only)

and, for the HTTP request itself: 413 for a body over the request limit, 415 for a
body that is neither JSON (``application/json``, or no Content-Type) nor binary
(``application/octet-stream``) with ``Inference-Header-Content-Length``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from google.protobuf import json_format

from edgecloud.core import v2_grpc, v2_rest
from edgecloud.core.auth import acting_as
from edgecloud.core.codec import DEFAULT_MAX_REQUEST_BYTES
from edgecloud.core.errors import EdgecloudError, ErrorKind, InvalidInput
from edgecloud.core.http_auth import STATUS, admit
from edgecloud.core.logging import REQUEST_ID_KEY, new_request_id
from edgecloud.core.v2_grpc import SERVICE_NAME, DataPlane

log = structlog.get_logger("edgecloud.v2")

RolesFor = Callable[[str], "frozenset[str] | None"]
"""gRPC method path (``/inference.GRPCInferenceService/ModelInfer``) -> the roles that
may call it, None when open; the same function the gRPC auth interceptor uses."""

_JSON = "application/json"
_BINARY = "application/octet-stream"
Handler = Callable[..., Awaitable[web.StreamResponse]]


def _json_response(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=v2_rest.encode_json(doc), status=status, content_type=_JSON)


def error_response(status: int, message: str) -> web.Response:
    """An HTTP answer carrying the v2 error document."""
    return web.Response(body=v2_rest.error_document(message), status=status,
                        content_type=_JSON)


def _request_id(request: web.Request) -> str:
    value = request.headers.get(REQUEST_ID_KEY)
    if value and len(value) <= 64 and value.isascii() and value.isprintable():
        return value
    return new_request_id()


def _boundary(method: str) -> Callable[[Handler], Handler]:
    """Wrap a route handler that answers what gRPC's ``method`` answers (see the module
    docstring). The handler takes ``(self, request, request_id)``."""
    path = f"/{SERVICE_NAME}/{method}"

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def boundary(self: V2Routes, request: web.Request) -> web.StreamResponse:
            request_id = _request_id(request)
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    roles = self._roles_for(path) if self._roles_for is not None else None
                    who = admit(request, roles) if roles is not None else None
                    with acting_as(who):
                        response = await handler(self, request, request_id)
                except web.HTTPException as exc:  # 401/403 from admit, aiohttp's own
                    exc.headers[REQUEST_ID_KEY] = request_id
                    raise
                except EdgecloudError as exc:
                    response = _refusal(exc, method, request_id)
                except Exception:
                    log.exception("http_crashed", method=method)
                    response = error_response(500, f"internal error (request id {request_id})")
            response.headers[REQUEST_ID_KEY] = request_id
            return response

        return boundary

    return wrap


def _refusal(exc: EdgecloudError, method: str, request_id: str) -> web.Response:
    status = STATUS[exc.kind].status_code
    if exc.kind is ErrorKind.INTERNAL:
        log.error("http_failed", method=method, kind=exc.kind.value, error=exc.message)
        return error_response(status, f"internal error (request id {request_id})")
    log.info("http_refused", method=method, status=status, error=exc.message)
    return error_response(status, exc.message)


class V2Routes:
    """The v2 REST routes over a :class:`~core.v2_grpc.DataPlane`."""

    def __init__(self, plane: DataPlane, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 roles_for: RolesFor | None = None) -> None:
        """``max_request_bytes``: the limit of gRPC's decoder on tensor bytes, and here
        also on the body. ``roles_for``: who may call what (None: an open server)."""
        self._plane = plane
        self._max_request_bytes = max_request_bytes
        self._roles_for = roles_for

    def routes(self) -> list[web.RouteDef]:
        """Every route, to add to the process's HTTP port."""
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        return [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get(model, self.model_metadata),
            web.get(version, self.model_metadata),
            web.get(f"{model}/ready", self.model_ready),
            web.get(f"{version}/ready", self.model_ready),
            web.get(f"{model}/config", self.model_config),
            web.get(f"{version}/config", self.model_config),
            web.post(f"{model}/infer", self.infer),
            web.post(f"{version}/infer", self.infer),
        ]

    @_boundary("ServerLive")
    async def live(self, request: web.Request, request_id: str) -> web.Response:
        return web.Response(status=200)

    @_boundary("ServerReady")
    async def ready(self, request: web.Request, request_id: str) -> web.Response:
        if self._plane.ready:
            return web.Response(status=200)
        return error_response(503, "the server is not ready")

    @_boundary("ServerMetadata")
    async def server_metadata(self, request: web.Request, request_id: str) -> web.Response:
        return _json_response(v2_rest.server_metadata(self._plane.server_name,
                                                      self._plane.server_version))

    @_boundary("ModelMetadata")
    async def model_metadata(self, request: web.Request, request_id: str) -> web.Response:
        name, version = _model(request)
        return _json_response(v2_rest.model_metadata(self._plane.metadata(name, version)))

    @_boundary("ModelConfig")
    async def model_config(self, request: web.Request, request_id: str) -> web.Response:
        name, version = _model(request)
        return _json_response(model_config(self._plane.metadata(name, version)))

    @_boundary("ModelReady")
    async def model_ready(self, request: web.Request, request_id: str) -> web.Response:
        name, version = _model(request)
        self._plane.metadata(name, version)  # an unknown model or version is a 404
        if self._plane.model_ready(name, version):
            return web.Response(status=200)
        return error_response(503, f"model {name!r} is not ready")

    @_boundary("ModelInfer")
    async def infer(self, request: web.Request, request_id: str) -> web.Response:
        name, version = _model(request)
        body = await self._body(request)
        if body.__class__ is web.Response:
            return body
        decoded = v2_rest.decode_infer_request(
            body, name, version,
            json_bytes=v2_rest.header_length(request.headers.get(v2_rest.HEADER_LENGTH),
                                             len(body)),
            max_request_bytes=self._max_request_bytes)
        answer = await self._plane.infer(decoded.request, decoded.time_left_s, request_id)
        document, chunks = v2_rest.encode_infer_response(answer, decoded)
        if not chunks:
            return web.Response(body=document, content_type=_JSON)
        return web.Response(body=b"".join([document, *chunks]), content_type=_BINARY,
                            headers={v2_rest.HEADER_LENGTH: str(len(document))})

    async def _body(self, request: web.Request) -> Any:
        """The request's body (bytes), or the 413/415 response that refuses it."""
        has_type = "Content-Type" in request.headers
        if has_type:
            mime = request.content_type
            binary = v2_rest.HEADER_LENGTH in request.headers
            if mime != _JSON and not (mime == _BINARY and binary):
                message = (f"{_BINARY} needs the {v2_rest.HEADER_LENGTH} header"
                           if mime == _BINARY else
                           f"Content-Type {mime!r} is not supported: send {_JSON}, or "
                           f"{_BINARY} with the {v2_rest.HEADER_LENGTH} header")
                log.info("http_refused", method="ModelInfer", status=415, error=message)
                return error_response(415, message)
        limit = self._max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        if len(body) > limit:
            return self._too_large(len(body))
        return body

    def _too_large(self, size: int | None) -> web.Response:
        message = (f"the request body is {size} bytes, over the limit of "
                   f"{self._max_request_bytes} bytes" if size is not None else
                   f"the request body is over the limit of {self._max_request_bytes} bytes")
        log.info("http_refused", method="ModelInfer", status=413, error=message)
        return error_response(413, message)


def model_config(info) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: gRPC's ModelConfig as Triton writes it in JSON
    (field names as in the proto, integers as numbers)."""
    config = json_format.MessageToDict(v2_grpc.model_config(info),
                                       preserving_proto_field_name=True)
    for tensor in (*config.get("input", ()), *config.get("output", ())):
        tensor["dims"] = [int(dim) for dim in tensor.get("dims", ())]
    return config


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    name = info["name"]
    if not name:
        raise InvalidInput("the model name is empty")
    return name, info.get("version", "")


def routes(plane: DataPlane, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
           roles_for: RolesFor | None = None) -> list[web.RouteDef]:
    """The v2 REST routes over ``plane`` (see :class:`V2Routes`)."""
    return V2Routes(plane, max_request_bytes=max_request_bytes, roles_for=roles_for).routes()
