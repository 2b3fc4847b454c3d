"""The admin service answers ListModels and SetRollout with typed messages, and the
operator's client reads them back into what a registry read directly gives."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fleet_helpers import publish_model

from edgecloud.core.artifacts import sha256_file
from edgecloud.core.signing import generate_keypair, key_fingerprint, load_public_key
from edgecloud.operations import GatewayOperator, RegistryOperator, publish_floor
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

TASK = "digits"


def _without_heartbeats(listing: dict) -> dict:
    """A listing with the replicas' report times left out (they move with each heartbeat)."""
    return {name: {**info, "served_by": sorted(info["served_by"])}
            for name, info in listing.items()}


@pytest.mark.e2e
async def test_models_and_rollouts_come_back_typed(start_gateway, tmp_path,
                                                   digits_dir) -> None:
    """ListModels carries each version's digest, size, signature state and signing key,
    the rollout's state as an enum with its percent and selector, the floor and the
    replicas serving the cloud model; the client turns it into exactly what the registry
    itself says, and SetRollout answers with the record it stored."""
    private, public = generate_keypair(tmp_path / "keys")
    registry = tmp_path / "registry"
    edge = digits_dir / "edge.onnx"
    for version in ("1", "2"):
        await asyncio.to_thread(publish_model, registry, TASK, edge, "edge", version=version,
                                key=private)
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "cloud.onnx", "cloud",
                            version="1", key=private, promote=True)
    direct = RegistryOperator(registry, trust_key=load_public_key(public))
    direct.rollout("start", TASK, version="2", percent=25.0, selector={"site": "berlin"},
                   max_failures=2)
    await asyncio.to_thread(publish_floor, direct, TASK, "1", private)
    gateway = await start_gateway(registry=registry, registry_poll_ms=50, trust_key=public,
                                  replica="replica-a")

    async with grpc.aio.insecure_channel(gateway.address) as channel:
        admin = pb_grpc.AdminServiceStub(channel)

        async def listed() -> pb.ModelInfo:
            reply = await admin.ListModels(pb.ListModelsRequest(), timeout=10)
            assert [m.name for m in reply.models] == [TASK]
            return reply.models[0]

        served: list[pb.ModelInfo] = []

        async def served_by_replica() -> bool:
            served[:] = [await listed()]
            return [s.replica for s in served[0].served_by] == ["replica-a"]

        deadline = asyncio.get_running_loop().time() + 20
        while not await served_by_replica():
            assert asyncio.get_running_loop().time() < deadline, "replica never reported"
            await asyncio.sleep(0.05)
        info = served[0]
        digest, size = sha256_file(edge)
        assert [(v.target, v.version) for v in info.versions] == [
            ("edge", "1"), ("edge", "2"), ("cloud", "1")]
        assert {(v.digest, v.size) for v in info.versions if v.target == "edge"} == {
            (digest, size)}
        assert {v.signature for v in info.versions} == {pb.SIGNATURE_STATE_VERIFIED}
        assert {v.signed_by for v in info.versions} == {key_fingerprint(load_public_key(public))}
        assert all(v.created for v in info.versions)
        assert info.rollout.state == pb.ROLLOUT_STATE_ACTIVE
        assert (info.rollout.stable, info.rollout.candidate) == ("1", "2")
        assert info.rollout.percent == 25.0 and info.rollout.max_failures == 2
        assert dict(info.rollout.selector) == {"site": "berlin"}
        assert info.rollout.target == "edge" and info.rollout.updated
        assert info.cloud_rollout.stable == "1"
        assert not info.cloud_rollout.HasField("candidate")
        assert (info.floor.version, info.floor.signed) == ("1", True)
        assert info.served_by[0].version == "1" and info.served_by[0].updated > 0

        operator = GatewayOperator(gateway.address)
        try:
            through_gateway = await asyncio.to_thread(operator.list_models)
            assert _without_heartbeats(through_gateway) == _without_heartbeats(
                direct.list_models())

            record = await admin.SetRollout(pb.RolloutRequest(action="pause", name=TASK),
                                            timeout=10)
            assert record.rollout.state == pb.ROLLOUT_STATE_PAUSED
            assert record.generation > 0
            assert record.rollout.history[-1].endswith(" pause")
            resumed = await asyncio.to_thread(operator.rollout, "resume", TASK)
        finally:
            operator.close()
        assert resumed == direct.registry.rollout(TASK).model_dump(mode="json")
        assert resumed["state"] == "active"


@pytest.mark.e2e
async def test_a_registry_without_a_trusted_key_lists_signatures_as_unchecked(
        start_gateway, tmp_path, digits_dir) -> None:
    """A signed version on a gateway with no trusted key is listed as unchecked, an
    unsigned one as unsigned, and the client reads both as the registry does."""
    private, _ = generate_keypair(tmp_path / "keys")
    registry = tmp_path / "registry"
    edge = digits_dir / "edge.onnx"
    await asyncio.to_thread(publish_model, registry, TASK, edge, "edge", version="1",
                            key=private)
    await asyncio.to_thread(publish_model, registry, TASK, edge, "edge", version="2")
    gateway = await start_gateway(registry=registry)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        reply = await pb_grpc.AdminServiceStub(channel).ListModels(
            pb.ListModelsRequest(name=TASK), timeout=10)
    assert [(v.version, v.signature) for v in reply.models[0].versions] == [
        ("1", pb.SIGNATURE_STATE_UNCHECKED), ("2", pb.SIGNATURE_STATE_NONE)]
    assert not reply.models[0].HasField("floor")
    operator = GatewayOperator(gateway.address)
    try:
        listing = await asyncio.to_thread(operator.list_models, TASK)
    finally:
        operator.close()
    assert [(v["signed"], v["signature"], v["signed_by"])
            for v in listing[TASK]["versions"]] == [
        (False, "unchecked", ""), (False, "none", "")]
    assert listing == RegistryOperator(registry).list_models(TASK)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "digits\n", "digits/edge"])
async def test_path_like_model_names_are_invalid_argument(start_gateway, tmp_path,
                                                          digits_dir, name) -> None:
    """ListModels and SetRollout refuse a name with a path in it or a trailing newline with
    INVALID_ARGUMENT naming it; the gateway answers the next call."""
    registry = tmp_path / "registry"
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="1")
    gateway = await start_gateway(registry=registry)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        admin = pb_grpc.AdminServiceStub(channel)
        calls = (admin.ListModels(pb.ListModelsRequest(name=name), timeout=10),
                 admin.SetRollout(pb.RolloutRequest(action="promote", name=name), timeout=10),
                 admin.SetRollout(pb.RolloutRequest(action="start", name=name, version="1",
                                                    percent=10), timeout=10))
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is not valid" in err.value.details()
        reply = await admin.ListModels(pb.ListModelsRequest(name=TASK), timeout=10)
    assert [v.version for v in reply.models[0].versions] == ["1"]
