"""Bearer tokens on the HTTP port: the same tokens, roles and refusals as on gRPC.

A handler calls :func:`admit` with the roles it allows. The token travels in the
``Authorization: Bearer ...`` header only (never in a URL). Refusals are the v2 REST
error document, ``{"error": "..."}``: 401 with ``WWW-Authenticate: Bearer`` when the
caller is unknown, 403 when its role may not do this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import structlog
from aiohttp import web

from edgecloud.core.auth import AUTH_KEY, Authenticator, Principal
from edgecloud.core.errors import EdgecloudError, ErrorKind, PermissionDenied, Unauthenticated

log = structlog.get_logger("edgecloud.http")

AUTHENTICATOR_KEY = web.AppKey("authenticator", Authenticator)
"""Where an application keeps its authenticator (absent: an open server)."""


STATUS: dict[ErrorKind, type[web.HTTPException]] = {
    ErrorKind.INVALID_ARGUMENT: web.HTTPBadRequest,
    ErrorKind.UNAUTHENTICATED: web.HTTPUnauthorized,
    ErrorKind.PERMISSION_DENIED: web.HTTPForbidden,
    ErrorKind.NOT_FOUND: web.HTTPNotFound,
    ErrorKind.FAILED_PRECONDITION: web.HTTPConflict,
    ErrorKind.ALREADY_EXISTS: web.HTTPConflict,
    ErrorKind.RESOURCE_EXHAUSTED: web.HTTPTooManyRequests,
    ErrorKind.INTERNAL: web.HTTPInternalServerError,
    ErrorKind.UNAVAILABLE: web.HTTPServiceUnavailable,
    ErrorKind.DEADLINE_EXCEEDED: web.HTTPGatewayTimeout,
}
"""Domain error kind -> the HTTP status every route of the HTTP port answers it with
(RESOURCE_EXHAUSTED is 429: the caller should slow down; FAILED_PRECONDITION is 409:
the request conflicts with the state it found)."""


def error_response(status: type[web.HTTPException], message: str,
                   headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP error carrying the v2 REST error document."""
    return status(text=json.dumps({"error": message}), content_type="application/json",
                  headers=headers)


def refusal(exc: EdgecloudError) -> web.HTTPException:
    """The HTTP answer to a domain error (see :data:`STATUS`)."""
    return error_response(STATUS.get(exc.kind, web.HTTPInternalServerError), exc.message)


def admit(request: web.Request, roles: Iterable[str]) -> Principal | None:
    """The caller of ``request`` when its role is one of ``roles``; None on an open
    server (no tokens configured). Raises the 401 or 403 to answer otherwise."""
    authenticator = request.app.get(AUTHENTICATOR_KEY)
    if authenticator is None:
        return None
    header = request.headers.get("Authorization", "")
    try:
        who = authenticator.identify([(AUTH_KEY, header)], {})
        if who.role not in roles:
            raise PermissionDenied(f"the {who.role} role may not {request.method} "
                                   f"{request.path}")
    except Unauthenticated as exc:
        log.warning("http_refused", path=request.path, status=401, problem=exc.message,
                    peer=request.remote)
        raise error_response(web.HTTPUnauthorized, exc.message,
                             {"WWW-Authenticate": "Bearer"}) from None
    except PermissionDenied as exc:
        log.warning("http_refused", path=request.path, status=403, problem=exc.message,
                    peer=request.remote)
        raise error_response(web.HTTPForbidden, exc.message) from None
    return who
