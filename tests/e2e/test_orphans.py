"""Temp files left by a crash are cleaned at start, and nothing else is."""

from __future__ import annotations

import os
import time

import pytest
from fleet_helpers import publish_model


@pytest.mark.e2e
async def test_an_agent_starts_by_removing_partial_downloads_and_temp_files(
        start_agent, tmp_path) -> None:
    """Partial downloads (staging/*.part) and atomic-write temp files of the agent's store
    are removed at start; its state and verified blobs stay."""
    store = tmp_path / "agent" / "store"
    (store / "staging").mkdir(parents=True)
    (store / "blobs").mkdir()
    part = store / "staging" / ("ab" * 32 + ".part")
    temp = store / ".state.json.x1y2.tmp"
    blob = store / "blobs" / ("cd" * 32)
    for path in (part, temp, blob):
        path.write_bytes(b"left over")
    (store / "state.json").write_text("{}")
    await start_agent(None, data_dir=tmp_path / "agent")
    assert not part.exists() and not temp.exists()
    assert blob.exists() and (store / "state.json").exists()


@pytest.mark.e2e
async def test_a_gateway_removes_old_orphans_of_its_registry_only(start_gateway, tmp_path,
                                                                  digits_dir) -> None:
    """Uploads and atomic-write temp files untouched for an hour are removed when a gateway
    starts; younger ones (another replica may be writing them) and everything else stay."""
    registry = tmp_path / "registry"
    publish_model(registry, "digits", digits_dir / "edge.onnx", "edge", version="1")
    old = [registry / "blobs" / "tmp" / "upload-1-2", registry / "rollouts" / ".digits.json.a.tmp",
           registry / ".generation.b.tmp",
           registry / "models" / "digits" / "edge" / ".1.json.c.tmp"]
    young = [registry / "blobs" / "tmp" / "upload-3-4", registry / "agents" / ".cam.json.d.tmp"]
    two_hours_ago = time.time() - 7200
    for path in old + young:
        path.write_bytes(b"partial")
    for path in old:
        os.utime(path, (two_hours_ago, two_hours_ago))
    await start_gateway(registry=registry)
    assert [p for p in old if p.exists()] == []
    assert all(p.exists() for p in young)
    assert (registry / "models" / "digits" / "edge" / "1.json").exists()
