"""Signed version floors in the registry: published checked, only rising, never undercut."""

from __future__ import annotations

import pytest
from fleet_helpers import publish_model

from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.rollouts import assignment_for
from edgecloud.core.errors import FailedPrecondition, NotFound, PermissionDenied
from edgecloud.core.signing import generate_keypair, load_public_key
from edgecloud.operations import RegistryOperator, publish_floor

TASK = "digits"


def test_a_floor_rises_only_and_rollouts_cannot_go_below_it(tmp_path, digits_dir) -> None:
    """A floor must name a published edge version at or below what the rollout assigns; it
    never goes down; rollouts, pins and promoting publications below it are refused; every
    agent's assignment carries it; the listing shows it."""
    registry = tmp_path / "registry"
    for version in ("1", "2", "3"):
        publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version=version)
    op = RegistryOperator(registry)
    with pytest.raises(NotFound, match="no edge version '9'"):
        publish_floor(op, TASK, "9")
    with pytest.raises(FailedPrecondition, match=r"still assigns version\(s\) 1 below 2"):
        publish_floor(op, TASK, "2")  # version 1 is stable
    op.rollout("start", TASK, version="3", percent=10.0)
    op.rollout("promote", TASK)
    reply = publish_floor(op, TASK, "2")
    assert (reply["version"], reply["signed"]) == ("2", False)
    with pytest.raises(FailedPrecondition, match="a floor never goes down"):
        publish_floor(op, TASK, "1")
    for action, fields in (("start", {"version": "1", "percent": 5.0}),
                           ("pin", {"version": "1", "agent_id": "cam-7"})):
        with pytest.raises(FailedPrecondition, match="below the task's signed minimum "
                                                     "version 2"):
            op.rollout(action, TASK, **fields)
    with pytest.raises(FailedPrecondition, match="below the task's signed minimum"):
        publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1.5",
                      promote=True)
    assignment = assignment_for(Registry(registry).snapshot(), "cam-7", {})
    assert [(f.floor.name, f.floor.version) for f in assignment.floors] == [(TASK, "2")]
    assert op.list_models(TASK)[TASK]["floor"]["version"] == "2"
    assert publish_floor(op, TASK, "3")["version"] == "3"


def test_a_gateway_that_trusts_a_key_refuses_unsigned_floors(tmp_path, digits_dir) -> None:
    """With a trust key, a floor must be signed by it."""
    private, public = generate_keypair(tmp_path / "keys")
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1", key=private)
    trusting = RegistryOperator(registry)
    trusting.registry.trust_key = load_public_key(public)
    with pytest.raises(PermissionDenied, match="a signature is required"):
        publish_floor(trusting, TASK, "1")
    assert publish_floor(trusting, TASK, "1", key=private)["signed"]
