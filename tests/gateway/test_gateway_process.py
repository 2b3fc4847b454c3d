"""`edgecloud gateway serve` as its own process: what it sets for the whole interpreter."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from processes import Process


async def test_serve_sets_the_switch_interval_from_its_settings(
        tmp_path: Path, digits_dir: Path, processes) -> None:
    """The gateway process sets Python's switch interval to gil_switch_interval_ms, so a
    worker thread back from a model run waits at most that long for the interpreter lock."""
    gateway = Process(
        ["gateway", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
         "--model", f"digits={digits_dir / 'cloud.onnx'}"], tmp_path, "gateway",
        env={**os.environ, "EDGECLOUD_GATEWAY_GIL_SWITCH_INTERVAL_MS": "0.25"})
    processes.append(gateway)
    await gateway.address()
    assert await gateway.stop(signal.SIGTERM) == 0
    events = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()
              if line.startswith("{")]
    assert [e["ms"] for e in events if e["event"] == "gil_switch_interval"] == [0.25]
