"""Process plumbing shared by the long-running binaries."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from edgecloud.core.auth import Authenticator
from edgecloud.core.files import atomic_write
from edgecloud.core.grpc_server import split_host_port
from edgecloud.core.http_server import HttpServer, metrics_route

log = structlog.get_logger("edgecloud.process")


def write_port_file(path: Path, host: str, port: int, http: str | None = None) -> None:
    """Write ``HOST:PORT`` (the gRPC address) atomically (temp file, fsync, rename); when
    the process serves HTTP too, a second line ``http HOST:PORT``."""
    text = f"{host}:{port}\n" + (f"http {http}\n" if http else "")
    atomic_write(path, text.encode(), make_parents=True)


def read_port_file(path: Path) -> tuple[str, str | None]:
    """The gRPC ``HOST:PORT`` a port file names, and its HTTP one (None when absent)."""
    lines = path.read_text().splitlines()
    http = next((line.split(None, 1)[1] for line in lines[1:] if line.startswith("http ")),
                None)
    return lines[0].strip(), http


def catch_stop_signals() -> asyncio.Future[str]:
    """From now on, SIGTERM and SIGINT resolve the returned future (with the signal's name)
    instead of killing the process; :func:`release_stop_signals` undoes it."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not stopped.done():
            stopped.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stopped


def release_stop_signals() -> None:
    """Give SIGTERM and SIGINT back their default handling."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


class ServingApp:
    """What every edgecloud server process shares: address, port file, HTTP port, drain.

    Subclasses build their data plane in ``start()``, await :meth:`_serving`
    once the gRPC server is up, add their HTTP routes in :meth:`_http_routes`, and
    close their own background work in :meth:`_close_background` (called after
    readiness drops, before the drain).
    """

    kind = "server"

    def __init__(self, settings) -> None:
        self.settings = settings
        self.service = None
        self.port: int | None = None
        self._lifecycle = None
        self._http: HttpServer | None = None
        self.http_port: int | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` the server is bound to."""
        host, _ = split_host_port(self.settings.listen)
        return f"{host}:{self.port}"

    @property
    def http_address(self) -> str | None:
        """``HOST:PORT`` of the HTTP port; None when the process serves no HTTP."""
        if self.http_port is None:
            return None
        host, _ = split_host_port(self.settings.http_listen)
        return f"{host}:{self.http_port}"

    def _http_routes(self) -> list[web.RouteDef]:
        """The process's own HTTP routes (``/metrics`` is added for every process)."""
        return []

    def _http_authenticator(self) -> Authenticator | None:
        """Who may call the HTTP routes that check (None: an open server)."""
        return None

    async def _serving(self, port: int, lifecycle, registry: CollectorRegistry) -> None:
        """Record the bound port, start the HTTP port, mark ready, write the port file."""
        self.port = port
        self._lifecycle = lifecycle
        if self.settings.http_listen:
            http = HttpServer([*self._http_routes(), metrics_route(registry)],
                              max_body_bytes=self.settings.max_request_bytes,
                              authenticator=self._http_authenticator())
            self.http_port = await http.start(self.settings.http_listen,
                                              shutdown_timeout_s=self.settings.drain_grace_s)
            self._http = http
        self.service.set_ready(True)
        if self.settings.port_file is not None:
            host, _ = split_host_port(self.settings.listen)
            write_port_file(self.settings.port_file, host, port, self.http_address)

    async def _close_background(self) -> None:
        """Stop the subclass's own background work (watchers, streams)."""

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: not ready, finish in-flight requests, close, exit."""
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        if self.service is not None:
            self.service.set_ready(False)
        await self._close_background()
        if self._lifecycle is not None:
            await self._lifecycle.drain(grace)
            self._lifecycle = None
        if self.service is not None:
            await self.service.aclose()
            self.service = None
        if self._http is not None:
            http, self._http = self._http, None
            await http.stop()
        log.info(f"{self.kind}_stopped")

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        raise NotImplementedError


async def run_until_signal(app: ServingApp) -> None:
    """Start ``app``, serve until SIGTERM or SIGINT, then drain.

    The signals are caught before the app starts: a supervisor that stops the process as
    soon as it is ready (its port file written) gets a drain, not a kill.
    """
    stopped = catch_stop_signals()
    try:
        await app.start()
        signal_name = await stopped  # one that came while starting is answered at once
        log.info(f"{app.kind}_draining", signal=signal_name)
    finally:
        release_stop_signals()
        await app.stop()
