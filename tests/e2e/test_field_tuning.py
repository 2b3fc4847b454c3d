"""Shadow samples logged in the field feed the tuner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from fleet_helpers import wait_until

from edgecloud.core.tensors import InferRequest
from edgecloud.router import dump_policy, parse_policy


@pytest.mark.e2e
async def test_shadow_samples_are_logged_and_tune_a_policy(start_gateway, start_agent,
                                                           tmp_path, digits_dir, digits_test):
    """With shadow sampling on, sampled confident rows are answered at the edge at once,
    the cloud's answer is logged beside the edge's, and `policy tune --field` reads it."""
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(dump_policy(policy.model_copy(update={"shadow_rate": 1.0})))
    gateway = await start_gateway()
    agent = await start_agent(gateway.address, policies=[policy_file])
    x, _ = digits_test
    answer = await agent.service.answer(
        InferRequest(model_name="digits", inputs={"pixels": x[:200]}), 5.0)
    reasons = {r.value for r in answer.routing.reasons()}
    assert "sampled" in reasons
    routes, reasons_by_row = answer.routing.routes(), answer.routing.reasons()
    assert all(route.value != "cloud"
               for route, reason in zip(routes, reasons_by_row, strict=True)
               if reason.value == "sampled")
    log_file = agent.settings.data_dir / "shadow" / "digits.jsonl"
    sampled = sum(reason.value == "sampled" for reason in reasons_by_row)
    await wait_until(lambda: log_file.exists()
                     and len(log_file.read_text().splitlines()) == sampled, what="shadow log")
    record = json.loads(log_file.read_text().splitlines()[0])
    assert len(record["edge"]) == len(record["cloud"]) == 10
    assert agent.service.metrics.task_counts("digits").shadow_rows == sampled
    out = tmp_path / "field.yaml"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edgecloud", "policy", "tune", "--field", str(log_file),
         "--out", str(out), "--name", "digits", "--target-escalation", "0.1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert parse_policy(out.read_text()).name == "digits"
