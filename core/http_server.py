"""The one HTTP port of a server process: v2 REST, ``/metrics`` and (gateway) the console.

aiohttp runs on the process's own event loop beside the gRPC server: one loop, one
set of services behind both protocols. Each process contributes its routes; this
module adds what every process serves (``/metrics``) and owns start and stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgecloud.core.auth import Authenticator
from edgecloud.core.grpc_server import split_host_port
from edgecloud.core.http_auth import AUTHENTICATOR_KEY

log = structlog.get_logger("edgecloud.http")

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
"""Largest request body read by default (the gRPC servers' default request limit)."""


def metrics_route(registry: CollectorRegistry) -> web.RouteDef:
    """``GET /metrics``: the registry in Prometheus' text format."""

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get("/metrics", metrics)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path 404, wrong method 405, body too large 413)
    as the v2 REST error document, ``{"error": "..."}``, like every other refusal."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = {404: f"no such path: {request.path}",
                   405: f"{request.method} is not allowed on {request.path}"}.get(
                       exc.status, exc.text or exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.Response(status=exc.status, text=json.dumps({"error": message}),
                            content_type="application/json", headers=headers)


class HttpServer:
    """An aiohttp application bound to one ``HOST:PORT`` on the running loop."""

    def __init__(self, routes: Iterable[web.RouteDef], *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 authenticator: Authenticator | None = None) -> None:
        """``authenticator``: the server's tokens (see :func:`http_auth.admit`); None for
        an open server."""
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[json_errors])
        if authenticator is not None:
            self.app[AUTHENTICATOR_KEY] = authenticator
        self.app.add_routes(list(routes))
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, listen: str, *, shutdown_timeout_s: float = 5.0) -> int:
        """Bind ``listen`` (port 0: any free port) and serve; returns the bound port.
        On :meth:`stop`, requests in flight get ``shutdown_timeout_s`` to finish."""
        host, port = split_host_port(listen)
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                               shutdown_timeout=shutdown_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # the asyncio server: the only place the bound port is
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        log.info("http_serving", address=f"{host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.shutdown()
            await runner.cleanup()
