"""The agent's fleet loops survive what goes wrong: real gateway and agents on loopback."""

from __future__ import annotations

import asyncio
import errno
import json

import pytest
from fleet_helpers import publish_policy, running_version, wait_until

from edgecloud.cloud_gateway.registry import Registry
from edgecloud.core.artifacts import build_model_manifest
from edgecloud.core.model import OnnxModel
from edgecloud.edge_agent.grpc.fleet_client import FleetClient
from edgecloud.edge_agent.model_manager import ArtifactStore, ModelManager
from edgecloud.edge_agent.service import EdgeService
from edgecloud.operations import RegistryOperator
from edgecloud.router import parse_policy

TASK = "digits"


def publish(registry, path, version: str, *, expected_output=None) -> str:
    """Publish an edge model version, optionally with another expected output; its digest."""
    manifest = build_model_manifest(path, name=TASK, version=version, target="edge")
    if expected_output is not None:
        manifest = manifest.model_copy(update={"expected_output": expected_output})
    RegistryOperator(registry).publish_model(manifest.canonical(), b"", path, False)
    return manifest.digest


def roll_out(registry, version: str) -> None:
    """Every agent runs ``version`` (a rollout at 100%, or promotion of the first)."""
    reg = Registry(registry)
    rollout = reg.rollout(TASK)
    if rollout is None:
        reg.set_rollout("promote", TASK, version=version)
    elif rollout.stable != version:
        reg.set_rollout("start", TASK, version=version, percent=100.0, max_failures=50)


def agent_status(registry, agent_id: str) -> dict:
    for status in Registry(registry).agent_statuses():
        if status.get("agent_id") == agent_id:
            return status
    return {}


def reported_swaps(registry, agent_id: str) -> list[dict]:
    return agent_status(registry, agent_id).get("swap_history") or []


async def fleet_agent(start_gateway, start_agent, tmp_path, **overrides):
    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50)
    agent = await start_agent(gateway.address, models={}, policies=[], agent_id="agent-0",
                              status_interval_s=0.2, reconnect_max_s=0.5, **overrides)
    return registry, gateway, agent


@pytest.mark.e2e
async def test_a_version_that_fails_its_smoke_test_oddly_is_reported_and_later_ones_apply(
        start_gateway, start_agent, tmp_path, digits_dir):
    """A manifest whose expected output cannot be compared with the model's (another shape:
    publish refuses a sample whose values do not fill its own shape) is a reported swap
    failure naming the problem, and a good version rolled out afterwards is applied."""
    registry, _, agent = await fleet_agent(start_gateway, start_agent, tmp_path)
    edge = digits_dir / "edge.onnx"
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await asyncio.to_thread(publish, registry, edge, "1")
    await asyncio.to_thread(roll_out, registry, "1")
    await wait_until(lambda: running_version(agent) == "1", what="v1")

    good = build_model_manifest(edge, name=TASK, version="2", target="edge")
    expected = good.expected_output[0]
    short = [expected.model_copy(update={"data": expected.data[:5], "shape": [1, 5]})]
    await asyncio.to_thread(publish, registry, edge, "2", expected_output=short)
    await asyncio.to_thread(roll_out, registry, "2")
    await wait_until(lambda: any(s["version"] == "2" and not s["ok"]
                                 for s in reported_swaps(registry, "agent-0")),
                     what="v2's failure reported")
    failure = next(s for s in reported_swaps(registry, "agent-0") if s["version"] == "2")
    assert "differs from the manifest's expected output" in failure["reason"]
    assert running_version(agent) == "1"

    await asyncio.to_thread(publish, registry, edge, "3")
    await asyncio.to_thread(roll_out, registry, "3")
    await wait_until(lambda: running_version(agent) == "3", what="v3 applied")
    assert agent.fleet.connected.is_set()


@pytest.mark.e2e
async def test_a_download_cut_short_is_retried_not_remembered(start_gateway, start_agent,
                                                              tmp_path, digits_dir):
    """While the gateway cannot send a version's bytes, the agent reports no failure and
    keeps trying with a backoff on the same stream; once it can, the version is applied."""
    registry, _, agent = await fleet_agent(start_gateway, start_agent, tmp_path)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await asyncio.to_thread(publish, registry, digits_dir / "edge.onnx", "1")
    await asyncio.to_thread(roll_out, registry, "1")
    await wait_until(lambda: running_version(agent) == "1", what="v1")

    digest = await asyncio.to_thread(publish, registry, digits_dir / "cloud.onnx", "2")
    blob = Registry(registry).blob_path(digest)
    hidden = blob.with_name("hidden")
    blob.rename(hidden)
    await asyncio.to_thread(roll_out, registry, "2")
    await wait_until(lambda: agent.metrics.deferred_fetches >= 2, what="retried downloads")
    assert running_version(agent) == "1"
    hidden.rename(blob)
    await wait_until(lambda: running_version(agent) == "2", what="v2 applied")
    assert not [s for s in reported_swaps(registry, "agent-0") if not s["ok"]]


@pytest.mark.e2e
async def test_the_watch_loop_survives_an_error_outside_any_artifact(
        start_gateway, start_agent, tmp_path, digits_dir):
    """An error while applying that belongs to no artifact (the agent's state cannot be
    written) is counted and logged, the stream opened again after a backoff, and the
    assignment applied once the disk is fixed."""
    registry, _, agent = await fleet_agent(start_gateway, start_agent, tmp_path)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await asyncio.to_thread(publish, registry, digits_dir / "edge.onnx", "1")
    await asyncio.to_thread(roll_out, registry, "1")
    await wait_until(lambda: running_version(agent) == "1", what="v1")

    state = agent.manager.store.state_path
    saved = state.read_bytes()
    state.unlink()
    state.mkdir()  # the state file cannot be replaced: every save fails
    await asyncio.to_thread(publish, registry, digits_dir / "cloud.onnx", "2")
    await asyncio.to_thread(roll_out, registry, "2")
    await wait_until(lambda: agent.metrics.loop_errors.get("fleet_watch", 0) >= 2,
                     what="errors survived")
    assert running_version(agent) == "1"
    state.rmdir()
    state.write_bytes(saved)
    await wait_until(lambda: running_version(agent) == "2", what="v2 applied")
    assert json.loads(state.read_bytes())["tasks"][TASK]["model"]["version"] == "2"


class FullDiskService(EdgeService):
    """An agent's data plane whose status cannot be read the first ``failures`` times (the
    disk under its ledger is full)."""

    def __init__(self, failures: int) -> None:
        super().__init__(None)
        self.failures = failures

    def tasks(self):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().tasks()


@pytest.mark.e2e
async def test_the_report_loop_survives_errors(start_gateway, tmp_path, digits_dir):
    """Reports that fail with an error (a full disk) are counted and logged, and the loop
    goes on: the gateway gets the agent's status once reports can be built again."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry)
    service = FullDiskService(failures=3)
    service.add_task(OnnxModel.load(digits_dir / "edge.onnx", name=TASK),
                     parse_policy((digits_dir / "policy.yaml").read_text()))
    fleet = FleetClient(gateway.address, "agent-0", {}, service, status_interval_s=0.05,
                        backoff_initial_s=0.01, backoff_max_s=0.05)
    manager = ModelManager(service, ArtifactStore(tmp_path / "store"), None)
    fleet.start(manager)
    try:
        await wait_until(lambda: agent_status(registry, "agent-0").get("tasks"),
                         what="a status report")
        assert service.metrics.loop_errors["fleet_report"] >= 1
    finally:
        await fleet.aclose()
        await service.aclose()
