"""Edgecloud commands run as their own processes, for tests that kill them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fleet_helpers import wait_until

from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.core.process import read_port_file

HARD_REASONS = {"low_confidence", "no_time", "budget_exhausted", "cloud_unavailable",
                "cloud_failed"}
QUICK_LEDGER = {"flush_interval_s": 0.05, "upload_interval_s": 0.05,
                "upload_batch_records": 3}
"""Small batches sent back to back: most moments of a run are mid-upload."""


class Process:
    """An `edgecloud` command running as its own process, with a port file."""

    def __init__(self, args: list[str], folder: Path, name: str,
                 preexec_fn: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port_file = folder / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log = open(folder / f"{name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgecloud", *args, "--port-file", str(self.port_file),
             "--log-format", "json"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn, env=env)

    async def address(self) -> str:
        """gRPC HOST:PORT once the process serves."""
        return (await self.addresses())[0]

    async def addresses(self) -> tuple[str, str | None]:
        """gRPC HOST:PORT and HTTP HOST:PORT (None without --http-listen) once serving."""
        await wait_until(lambda: self.port_file.exists() or self.proc.poll() is not None,
                         timeout_s=60, what="port file")
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}"
        return read_port_file(self.port_file)

    async def stop(self, sig: signal.Signals) -> int:
        """Send ``sig`` and wait for the exit code."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, 60)
        self.log.close()
        return code


def ledger_counters(folder: Path) -> dict[str, int]:
    """The counters of the agent's ledger, read from its file."""
    with contextlib.closing(sqlite3.connect(folder / "agent" / "hard" / "ledger.sqlite3")) as db:
        return dict(db.execute("SELECT name, value FROM counters").fetchall())


def stored_seqs(registry: Path) -> list[int]:
    """Sequence numbers of the digits records the gateway stored."""
    return [k.seq for k in HardExampleStore(registry / "hard_examples").records("digits")]


def stored_count(registry: Path) -> int:
    """How many digits records the gateway stored."""
    return len(stored_seqs(registry))
