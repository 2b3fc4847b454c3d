"""Agent status reports are bounded, so one agent cannot break `fleet status`."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from edgecloud.operations import GatewayOperator
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc


async def test_an_oversize_status_is_refused_and_fleet_status_still_answers(
        start_gateway) -> None:
    """A 5 MiB ReportStatus is refused with INVALID_ARGUMENT; fleet status lists the others."""
    gateway = await start_gateway()
    async with grpc.aio.insecure_channel(
            gateway.address,
            options=[("grpc.max_send_message_length", 8 * 2**20)]) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.ReportStatus(pb.AgentStatus(agent_id="big",
                                                    labels={"junk": "x" * 5 * 2**20}), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the limit" in err.value.details()
        swaps = [pb.SwapOutcome(kind="model", name="digits", version=str(i), ok=True)
                 for i in range(100)]
        await fleet.ReportStatus(pb.AgentStatus(agent_id="small", swaps=swaps), timeout=10)
    agents = await asyncio.to_thread(GatewayOperator(gateway.address).fleet_status)
    assert [a["agent_id"] for a in agents] == ["small"]
    assert [s["version"] for s in agents[0]["swaps"]] == [str(i) for i in range(68, 100)]


async def test_fleet_status_answers_typed_entries(start_gateway) -> None:
    """FleetStatus answers typed entries, and the operator turns them into the same plain
    data the registry keeps (so `fleet status --json` keeps its shape)."""
    gateway = await start_gateway()
    report = pb.AgentStatus(
        agent_id="cam-1", labels={"site": "north"}, applied_generation=3,
        tasks=[pb.TaskCounters(name="digits")],
        swaps=[pb.SwapOutcome(kind="model", name="digits", version="2", ok=False,
                              reason="smoke test", at=1.5)])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        await pb_grpc.FleetServiceStub(channel).ReportStatus(report, timeout=10)
        reply = await pb_grpc.AdminServiceStub(channel).FleetStatus(pb.FleetStatusRequest(),
                                                                    timeout=10)
    (entry,) = reply.agents
    assert entry.status.agent_id == "cam-1" and entry.status.labels["site"] == "north"
    assert entry.replica == gateway.settings.replica and entry.last_seen > 0
    assert [s.reason for s in entry.swap_history] == ["smoke test"]
    stored = gateway.hub.registry.agent_statuses()
    typed = await asyncio.to_thread(GatewayOperator(gateway.address).fleet_status)
    assert typed == [{**stored[0], "connected_here": False}]
