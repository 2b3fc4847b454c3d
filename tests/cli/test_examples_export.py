"""`edgecloud examples export`: hard examples as a data set, from a registry or a gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.tensors import InferRequest
from edgecloud.ops_cli import parse_since


def edgecloud(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.e2e
async def test_export_from_a_registry_and_through_a_gateway(start_gateway, start_agent,
                                                            tmp_path, digits_test):
    """Both targets write the same examples.npz (the inputs, one row per record) and
    index.jsonl (ids, agent, time, reason, both answers, versions); --since filters; the
    gateway serves the export to operators only."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-secret-012345]\nagents: {ag-secret-012345: cam-7}\n")
    (tmp_path / "op.token").write_text("op-secret-012345\n")
    (tmp_path / "agent.token").write_text("ag-secret-012345\n")
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, tokens_file=tokens)
    agent = await start_agent(gateway.address, agent_id="cam-7", status_interval_s=3600,
                              token_file=tmp_path / "agent.token")
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(model_name="digits",
                                                     inputs={"pixels": x[:120]}), 5.0)
    hard = [i for i, r in enumerate(answer.routing.routes()) if r.value == "cloud"]
    assert await agent.uploader.upload() == len(hard)

    by_registry, by_gateway = tmp_path / "from-registry", tmp_path / "from-gateway"
    runs = await asyncio.gather(
        asyncio.to_thread(edgecloud, "examples", "export", "--registry", str(registry),
                          "--task", "digits", "--out", str(by_registry)),
        asyncio.to_thread(edgecloud, "examples", "export", "--gateway", gateway.address,
                          "--token-file", str(tmp_path / "op.token"), "--task", "digits",
                          "--since", "1h", "--out", str(by_gateway)),
        asyncio.to_thread(edgecloud, "examples", "export", "--gateway", gateway.address,
                          "--token-file", str(tmp_path / "agent.token"), "--task", "digits",
                          "--out", str(tmp_path / "refused")),
        asyncio.to_thread(edgecloud, "examples", "export", "--registry", str(registry),
                          "--task", "digits", "--since", "2999-01-01",
                          "--out", str(tmp_path / "none")),
    )
    for result in runs[:2]:
        assert result.returncode == 0, result.stderr
        assert f"exported {len(hard)} hard examples" in result.stdout
    assert runs[2].returncode == 2 and "PERMISSION_DENIED" in runs[2].stderr
    assert "exported 0 hard examples" in runs[3].stdout

    for folder in (by_registry, by_gateway):
        with np.load(folder / "examples.npz") as data:
            np.testing.assert_array_equal(data["pixels"], x[hard])
        lines = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
        assert [line["row"] for line in lines] == list(range(len(hard)))
        assert [line["seq"] for line in lines] == list(range(1, len(hard) + 1))
        for line in lines:
            assert line["agent_id"] == "cam-7"
            assert line["record_id"].startswith(f"cam-7.{line['seq']}.")
            assert (line["reason"], line["route"]) == ("low_confidence", "cloud")
            assert line["cloud_class"] == int(np.argmax(line["cloud_scores"]))
            assert line["edge_class"] == int(np.argmax(line["edge_scores"]))
            assert (line["model_version"], line["policy_version"],
                    line["cloud_model_version"]) == ("1", "1", "1")
            assert line["time"].endswith("Z")
    assert (by_registry / "index.jsonl").read_text() == (by_gateway / "index.jsonl").read_text()


def test_since_takes_times_and_durations() -> None:
    """--since reads ISO 8601 (UTC unless it says otherwise) and durations back from now."""
    now = 1_700_000_000.0
    assert parse_since("90m", now) == now - 5400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp()
    assert parse_since("2024-05-01T12:00:00+02:00") == dt.datetime(
        2024, 5, 1, 10, tzinfo=dt.UTC).timestamp()


def test_a_bad_since_exits_2(tmp_path: Path) -> None:
    """A --since that is neither a time nor a duration gets one line and exit code 2."""
    result = edgecloud("examples", "export", "--registry", str(tmp_path), "--task", "digits",
                       "--since", "yesterday", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "--since 'yesterday'" in result.stderr and "Traceback" not in result.stderr
