"""Process plumbing shared by the long-running binaries."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from edgecloud.core.files import atomic_write
from edgecloud.core.grpc_server import split_host_port

log = structlog.get_logger("edgecloud.process")


def write_port_file(path: Path, host: str, port: int) -> None:
    """Write ``HOST:PORT`` atomically (temp file, fsync, rename)."""
    atomic_write(path, f"{host}:{port}\n".encode(), make_parents=True)


def serve_metrics(address: str, registry: CollectorRegistry):
    """Start the Prometheus HTTP endpoint on ``address``; returns the server."""
    host, port = split_host_port(address)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics_serving", address=address, port=server.server_port)
    return server


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
    """What every edgecloud server process shares: address, port file, metrics, drain.

    Subclasses build their data plane in ``start()``, call :meth:`_serving`
    once the gRPC server is up, and close their own background work in
    :meth:`_close_background` (called after readiness drops, before the drain).
    """

    kind = "server"

    def __init__(self, settings) -> None:
        self.settings = settings
        self.service = None
        self.port: int | None = None
        self._lifecycle = None
        self._metrics_server = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` the server is bound to."""
        host, _ = split_host_port(self.settings.listen)
        return f"{host}:{self.port}"

    def _serving(self, port: int, lifecycle, registry: CollectorRegistry) -> None:
        """Record the bound port, mark ready, start metrics, write the port file."""
        self.port = port
        self._lifecycle = lifecycle
        self.service.set_ready(True)
        if self.settings.metrics_listen:
            self._metrics_server = serve_metrics(self.settings.metrics_listen, registry)
        if self.settings.port_file is not None:
            host, _ = split_host_port(self.settings.listen)
            write_port_file(self.settings.port_file, host, port)

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
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
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
