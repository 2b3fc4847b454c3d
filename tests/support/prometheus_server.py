"""A real Prometheus server on loopback (Debian's ``prometheus`` package) that scrapes the
HTTP ports of test servers, and a small client for its query API."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

START_TIMEOUT_S = 60.0
DEBIAN_PATH = Path("/usr/bin/prometheus")


def prometheus_binary() -> str:
    """The ``prometheus`` executable, or a skip saying why there is none."""
    found = shutil.which("prometheus")
    if found is None and DEBIAN_PATH.is_file():
        found = str(DEBIAN_PATH)
    if found is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus: "
                    "apt-get install prometheus)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A running Prometheus: its address and its instant-query API."""

    def __init__(self, address: str, proc: subprocess.Popen, log: Path) -> None:
        self.address = address
        self.proc = proc
        self.log = log

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """The instant vector ``promql`` evaluates to now: (labels, value) per series."""
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{self.address}/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    async def _ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://{self.address}/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def log_tail(self) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """End the process (by its PID: SIGTERM, then SIGKILL if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(folder: Path, jobs: dict[str, list[str]], interval_s: float) -> Path:
    """Write ``folder/prometheus.yml``: scrape ``/metrics`` of each job's HOST:PORT targets."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    config = {
        "global": {"scrape_interval": f"{interval_s:g}s",
                   "scrape_timeout": f"{interval_s:g}s",
                   "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics",
             "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(binary: str, folder: Path, config: Path) -> Prometheus:
    """Start Prometheus on a port found free on loopback (not yet ready)."""
    address = f"127.0.0.1:{_free_port()}"
    log = folder / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address={address}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder)
    return Prometheus(address, proc, log)


async def _start(binary: str, folder: Path, config: Path) -> Prometheus:
    """Start Prometheus and wait until it is ready."""
    for _ in range(3):  # a port found free may be taken before Prometheus binds it
        server = _launch(binary, folder, config)
        deadline = time.monotonic() + START_TIMEOUT_S
        while server.proc.poll() is None and time.monotonic() < deadline:
            if await server._ready():
                return server
            await asyncio.sleep(0.1)
        server.stop()
        if "address already in use" not in server.log_tail():
            break
    raise RuntimeError(f"Prometheus did not start (exit {server.proc.poll()}):\n"
                       f"{server.log_tail()}")


@contextlib.asynccontextmanager
async def prometheus(folder: Path, jobs: dict[str, list[str]],
                     interval_s: float = 1.0) -> AsyncIterator[Prometheus]:
    """Run Prometheus scraping ``jobs`` (job name -> HOST:PORT targets) every ``interval_s``,
    its data in ``folder``; the process is ended when the block exits."""
    binary = prometheus_binary()
    config = write_config(folder, jobs, interval_s)
    server = await _start(binary, folder, config)
    try:
        yield server
    finally:
        server.stop()


async def wait_for_values(server: Prometheus, expected: dict[str, float],
                          timeout_s: float = 60.0) -> None:
    """Poll until each query in ``expected`` gives exactly one series with that value; the
    assertion on timeout shows what Prometheus answered last."""
    seen: dict[str, list[float]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for promql in expected:
            seen[promql] = [value for _, value in await server.query(promql)]
        if all(seen[q] == [v] for q, v in expected.items()):
            return
        if time.monotonic() > deadline:
            wrong = {q: (seen[q], expected[q]) for q in expected if seen[q] != [expected[q]]}
            raise AssertionError(f"Prometheus answered (got, expected): {wrong}")
        await asyncio.sleep(0.25)
