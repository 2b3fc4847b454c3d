"""A signed version floor stops a gateway from downgrading agents."""

from __future__ import annotations

import asyncio
import json

import pytest
from fleet_helpers import publish_model, publish_policy, running_version, wait_until

from edgecloud.core.signing import generate_keypair
from edgecloud.operations import GatewayOperator, RegistryOperator, publish_floor


@pytest.mark.e2e
async def test_a_compromised_registry_cannot_downgrade_past_the_floor(
        start_gateway, start_agent, tmp_path, digits_dir) -> None:
    """Once an operator published a signed floor through the gateway, an agent assigned an
    older (validly signed) version by a tampered registry that also dropped the floor
    refuses it, reports why, and keeps serving the version it runs."""
    private, public = generate_keypair(tmp_path / "keys")
    registry = tmp_path / "registry"
    for version in ("1", "2"):
        await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                                "edge", version=version, key=private)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml", key=private)
    RegistryOperator(registry).rollout("start", "digits", version="2", percent=100.0)
    RegistryOperator(registry).rollout("promote", "digits")
    gateway = await start_gateway(registry=registry, registry_poll_ms=50, trust_key=public)
    agent = await start_agent(gateway.address, models={}, policies=[], trust_key=public,
                              status_interval_s=0.2)
    await wait_until(lambda: running_version(agent) == "2", what="version 2")
    operator = GatewayOperator(gateway.address)
    try:
        reply = await asyncio.to_thread(publish_floor, operator, "digits", "2", private)
    finally:
        operator.close()
    assert reply["signed"]
    await wait_until(lambda: "digits" in agent.manager.floors, what="floor received")

    # The attacker rewrites the rollout record to the older version and drops the floor.
    record_path = registry / "rollouts" / "digits.json"
    record = json.loads(record_path.read_text())
    record["stable"] = "1"
    record_path.write_text(json.dumps(record))
    (registry / "floors" / "digits.json").unlink()
    generation = int((registry / "generation").read_text()) + 1
    (registry / "generation").write_text(f"{generation}\n")

    def refused() -> bool:
        last = agent.manager.last_outcome
        return last is not None and last.version == "1" and not last.ok

    await wait_until(refused, what="downgrade refused")
    assert "below the signed minimum version 2" in agent.manager.last_outcome.reason
    assert running_version(agent) == "2"
    assert agent.manager.floors["digits"].version == "2"
