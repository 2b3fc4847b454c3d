"""Live policy changes from a watched file, and drift in the agent's metrics."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest

from edgecloud.core.tensors import InferRequest
from edgecloud.router import calibration_histogram, dump_policy, parse_policy, score_rows


async def answer(agent, x):
    return await agent.service.answer(InferRequest(model_name="digits", inputs={"pixels": x}),
                                      1.0)


async def test_edited_policy_file_takes_effect_without_restart(start_agent, tmp_path,
                                                               digits_dir, digits_test):
    """Editing the policy file changes routing on the next request; a broken edit is
    refused and the running policy stays."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text((digits_dir / "policy.yaml").read_text())
    agent = await start_agent(None, policies=[policy_file], policy_poll_s=3600)
    x, _ = digits_test
    before = await answer(agent, x[:50])
    assert {r.value for r in before.routing.reasons()} >= {"confident"}

    policy = parse_policy(policy_file.read_text())
    policy_file.write_text(dump_policy(policy.model_copy(update={"threshold": 1.0,
                                                                 "version": "2"})))
    await agent.policy_watcher.check()
    after = await answer(agent, x[:50])
    assert {r.value for r in after.routing.reasons()} == {"cloud_unavailable"}
    assert agent.service.task("digits").current.policy.version == "2"

    policy_file.write_text("name: digits\nthreshold: 7\n")
    await agent.policy_watcher.check()
    assert agent.service.task("digits").current.policy.version == "2"
    assert agent.policy_watcher.reloads == 1


async def test_drift_shows_in_metrics(start_agent, tmp_path, digits_dir, digits_test,
                                      onnx_reference):
    """With a calibration histogram in the policy, noisy inputs move the drift status in
    the agent's Prometheus metrics away from stable."""
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    with np.load(digits_dir / "calibration.npz") as data:
        calibration = data["X"]
    confidence, _ = score_rows(policy, onnx_reference("edge", calibration))
    policy = policy.model_copy(update={"calibration_histogram":
                                       calibration_histogram(confidence)})
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(dump_policy(policy))
    agent = await start_agent(None, policies=[policy_file])
    x, _ = digits_test
    rng = np.random.default_rng(0)
    noisy = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1).astype(np.float32)
    await answer(agent, noisy)
    text = generate_latest(agent.metrics.registry).decode()
    assert "edgecloud_agent_drift_psi" in text
    stable = 'edgecloud_agent_drift_status{status="stable",task="digits"} 1.0'
    assert stable not in text


async def test_metrics_count_requests_rows_and_latency(start_agent, digits_test):
    """The agent's Prometheus output counts requests, rows by route and reason, and
    latency observations."""
    agent = await start_agent(None)
    x, _ = digits_test
    await answer(agent, x[:10])
    await answer(agent, x[10:11])
    text = generate_latest(agent.metrics.registry).decode()
    assert 'edgecloud_agent_requests_total{task="digits"} 2.0' in text
    rows = [line for line in text.splitlines()
            if line.startswith("edgecloud_agent_rows_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in rows) == 11.0
    assert 'edgecloud_agent_latency_seconds_count{task="digits"} 2.0' in text
    assert 'edgecloud_agent_latency_seconds_bucket{le="+Inf",task="digits"} 2.0' in text
