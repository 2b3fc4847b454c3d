"""Many agents' watch streams on one gateway: a burst of them, shared assignments, no
queue behind a slow stream."""

from __future__ import annotations

import asyncio

import grpc
from fleet_helpers import publish_model, wait_until

from edgecloud.cloud_gateway.fleet import FleetHub
from edgecloud.cloud_gateway.grpc.fleet_servicer import EncodedAssignments, assignment_message
from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.rollouts import bucket
from edgecloud.operations import RegistryOperator
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

TASK = "digits"


async def test_a_fleet_connecting_at_once_is_held_not_refused(start_gateway, tmp_path,
                                                              digits_dir) -> None:
    """1,500 watch streams opened at once (more than gRPC's default backlog of 1,000 calls
    waiting for the server) all get their first assignment: the gateway holds the calls it
    has not taken yet instead of refusing them."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    gateway = await start_gateway(registry=registry)
    streams, per_connection = 1500, 250
    channels = [grpc.aio.insecure_channel(gateway.address, options=[
        ("grpc.use_local_subchannel_pool", 1), ("test.connection", n)])
        for n in range(streams // per_connection)]

    async def first_version(n: int) -> str:
        stub = pb_grpc.FleetServiceStub(channels[n // per_connection])
        call = stub.WatchAssignments(pb.AgentHello(agent_id=f"agent-{n}"), timeout=120)
        try:
            message = await call.read()
            return message.models[0].version
        finally:
            call.cancel()

    try:
        results = await asyncio.gather(*(first_version(n) for n in range(streams)),
                                       return_exceptions=True)
    finally:
        for channel in channels:
            await channel.close()
    failed = [r for r in results if not isinstance(r, str)]
    assert not failed, f"{len(failed)} streams failed, e.g. {failed[0]!r}"
    assert set(results) == {"1"}


async def test_agents_with_the_same_versions_share_one_assignment(tmp_path,
                                                                  digits_dir) -> None:
    """Within a snapshot each distinct assignment is built and encoded once: every agent on
    the same versions gets the same object and the same bytes (which decode to the message
    built the plain way); a rollout to half the fleet makes exactly two, each agent getting
    the one its hash picks."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1", promote=True)
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="2")
    hub = FleetHub(Registry(registry), "replica-1", None, poll_s=0.02)
    await hub.start()
    agents = [f"cam-{n}" for n in range(40)]
    watches = [hub.watch(agent, {"site": "berlin"}) for agent in agents]
    try:
        firsts = [await anext(watch) for watch in watches]
        assert all(a is firsts[0] for a in firsts)
        assert firsts[0].models[0].manifest.version == "1"
        encode = EncodedAssignments("replica-1")
        assert all(encode(a) is encode(firsts[0]) for a in firsts)
        assert (pb.Assignment.FromString(encode(firsts[0]))
                == assignment_message(firsts[0], "replica-1"))

        candidates = [n for n, agent in enumerate(agents) if bucket(TASK, agent) < 50.0]
        assert 0 < len(candidates) < len(agents)
        RegistryOperator(registry).rollout("start", TASK, version="2", percent=50.0)
        moved = await asyncio.wait_for(
            asyncio.gather(*(anext(watches[n]) for n in candidates)), timeout=30)
        assert {a.models[0].manifest.version for a in moved} == {"2"}
        assert all(a is moved[0] for a in moved)

        later = [hub.watch(agent, {"site": "berlin"}) for agent in agents]
        now = [await anext(watch) for watch in later]
        assert len({id(a) for a in now}) == 2
        assert [a.models[0].manifest.version for a in now] == [
            "2" if n in candidates else "1" for n in range(len(agents))]
        assert len({encode(a) for a in now}) == 2
        for watch in later:
            await watch.aclose()
    finally:
        for watch in watches:
            await watch.aclose()
        await hub.aclose()


async def test_a_stream_that_does_not_read_gets_the_newest_assignment_only(tmp_path,
                                                                          digits_dir) -> None:
    """A stream holds no queue: an agent that reads nothing while three versions are
    published gets the newest one next, not the ones it missed in turn."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    reg = Registry(registry)
    hub = FleetHub(reg, "replica-1", None, poll_s=0.02)
    await hub.start()
    watch = hub.watch("cam-1", {})
    try:
        assert (await anext(watch)).models[0].manifest.version == "1"
        for version in ("2", "3", "4"):
            publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version=version,
                          promote=True)
            generation = reg.generation()
            await wait_until(lambda g=generation: hub.snapshot.generation == g,
                             what=f"the hub to see version {version}")
        newest = await asyncio.wait_for(anext(watch), timeout=30)
        assert newest.models[0].manifest.version == "4"
        assert newest.generation == reg.generation()
    finally:
        await watch.aclose()
        await hub.aclose()


async def test_assignments_ask_the_fleet_to_spread_its_reports(start_gateway, tmp_path,
                                                               digits_dir) -> None:
    """An assignment names how long its agents should spread the status reports that follow
    it over: the setting per agent times the agents watching this replica, at most the
    maximum; a gateway set to 0 asks for reports at once."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    gateway = await start_gateway(registry=registry, report_spread_per_agent_ms=1000.0,
                                  report_spread_max_ms=2500)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.FleetServiceStub(channel)
        calls = [stub.WatchAssignments(pb.AgentHello(agent_id=f"agent-{n}"), timeout=60)
                 for n in range(3)]
        try:
            first = await calls[0].read()
            assert first.report_spread_ms == 1000  # one agent watching
            for call in calls[1:]:
                await call.read()
            await wait_until(lambda: gateway.hub.watching() == 3, 10, "three streams")
            publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="2")
            RegistryOperator(registry).rollout("start", TASK, version="2", percent=100.0)
            update = await calls[0].read()
            assert update.models[0].version == "2"
            assert update.report_spread_ms == 2500  # 3 × 1000 ms, at most 2500
        finally:
            for call in calls:
                call.cancel()
    quiet = await start_gateway(registry=registry, report_spread_per_agent_ms=0.0)
    async with grpc.aio.insecure_channel(quiet.address) as channel:
        call = pb_grpc.FleetServiceStub(channel).WatchAssignments(
            pb.AgentHello(agent_id="agent-0"), timeout=60)
        try:
            assert (await call.read()).report_spread_ms == 0
        finally:
            call.cancel()
