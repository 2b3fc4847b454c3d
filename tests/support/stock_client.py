"""Stock v2 clients (tritonclient) run in a subprocess of their own, as an app would run
them: tritonclient registers its own ``inference.*`` protobuf messages, so it never
shares a process with edgecloud."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


async def run_client_script(script: str, address: str, x_path: Path) -> dict:
    """Run ``script`` (``python -c``) with the arguments ADDRESS MODEL X_PATH; the JSON
    document it prints (it must succeed within a minute)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, address, "digits", str(x_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode()
    return json.loads(stdout)
