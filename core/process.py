"""Process plumbing shared by the long-running binaries."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from core.grpc_server import split_host_port

log = structlog.get_logger("edgecloud.process")


def write_port_file(path: Path, host: str, port: int) -> None:
    """Write ``HOST:PORT`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{host}:{port}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def serve_metrics(address: str, registry: CollectorRegistry):
    """Start the Prometheus HTTP endpoint on ``address``; returns the server."""
    host, port = split_host_port(address)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics_serving", address=address, port=server.server_port)
    return server


async def wait_for_stop_signal() -> str:
    """Wait for SIGTERM or SIGINT inside the running loop; returns its name."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not stopped.done():
            stopped.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await stopped
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
