"""Bearer tokens with roles on the gateway."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fleet_helpers import (
    digits_like_model,
    publish_model,
    publish_policy,
    running_version,
    wait_until,
)

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.tensors import InferRequest
from edgecloud.operations import RegistryOperator
from edgecloud.protos.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc


@pytest.mark.e2e
async def test_roles_and_identity_are_enforced(start_gateway, start_agent, tmp_path,
                                               digits_dir, digits_test):
    """Admin calls need the operator role, agents may only act as themselves, inference
    needs a token while liveness stays open; a tokened agent gets models and escalates."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-secret-012345]\nagents: {ag-secret-012345: agent-0}\n")
    (tmp_path / "agent.token").write_text("ag-secret-012345\n")
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, registry_poll_ms=50,
                                  tokens_file=tokens)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        admin = fleet_pb2_grpc.AdminServiceStub(channel)
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               (call_metadata("wrong"), grpc.StatusCode.UNAUTHENTICATED),
                               (call_metadata("ag-secret-012345"),
                                grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.FleetStatus(fleet_pb2.FleetStatusRequest(), metadata=metadata)
            assert err.value.code() == code
        await admin.FleetStatus(fleet_pb2.FleetStatusRequest(),
                                metadata=call_metadata("op-secret-012345"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            stream = fleet.WatchAssignments(fleet_pb2.AgentHello(agent_id="agent-1"),
                                            metadata=call_metadata("ag-secret-012345"))
            await stream.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only act as itself" in err.value.details()
        assert (await v2.ServerLive(pb.ServerLiveRequest())).live
        request = codec.encode_infer_request(InferRequest(
            model_name="digits", inputs={"pixels": np.zeros((1, 64), np.float32)}))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await v2.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    agent = await start_agent(gateway.address, models={}, policies=[], agent_id="agent-0",
                              token_file=tmp_path / "agent.token", status_interval_s=0.2)
    await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                            "edge", version="1")
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await wait_until(lambda: running_version(agent) == "1", what="model over an authed stream")
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(model_name="digits", inputs={
        "pixels": x[:5]}, parameters={"route": "cloud"}), 5.0)
    assert {r.value for r in answer.routing.routes()} == {"cloud"}


@pytest.mark.e2e
async def test_agent_refused_by_the_gateway_says_so_and_is_not_fleet_ready(
        start_gateway, start_agent, tmp_path):
    """An agent whose token is bound to another agent id logs the refusal as an error
    (not an info-level retry), and its health check reports its fleet link NOT_SERVING
    while local inference stays up; with its own id it connects and reports SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from structlog.testing import capture_logs

    from edgecloud.edge_agent.app import FLEET_HEALTH

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-secret-012345]\nagents: {ag-secret-012345: agent-0}\n")
    (tmp_path / "agent.token").write_text("ag-secret-012345\n")
    gateway = await start_gateway(registry=tmp_path / "registry", tokens_file=tokens)

    async def fleet_health(agent) -> int:
        async with grpc.aio.insecure_channel(agent.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=FLEET_HEALTH), timeout=5)
        return reply.status

    with capture_logs() as logs:
        wrong = await start_agent(gateway.address, agent_id="agent-1",
                                  token_file=tmp_path / "agent.token", reconnect_max_s=0.2)
        await wait_until(lambda: any(e["event"] == "fleet_access_denied" for e in logs),
                         what="refusal logged")
    refusal = next(e for e in logs if e["event"] == "fleet_access_denied")
    assert refusal["log_level"] == "error" and refusal["code"] == "PERMISSION_DENIED"
    assert "only act as itself" in refusal["error"]
    assert not any(e["event"] == "fleet_reconnecting" for e in logs)
    assert wrong.fleet.state == "denied"
    assert await fleet_health(wrong) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(wrong.address) as channel:
        assert (await pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            pb.ServerReadyRequest())).ready
    right = await start_agent(gateway.address, agent_id="agent-0",
                              token_file=tmp_path / "agent.token")
    await wait_until(lambda: right.fleet.state == "connected", what="connected")
    assert await fleet_health(right) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.e2e
async def test_viewers_read_and_odd_tokens_are_unknown(start_gateway, tmp_path) -> None:
    """A viewer token lists the fleet and models but changes nothing; "None", too short and
    hashed-form tokens are unknown (UNAUTHENTICATED) and the next good call works."""
    from edgecloud.core.auth import hash_token

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"viewers: ['{hash_token('viewer-token-0123456789')}']\n"
                      "operators: [op-secret-012345]\n")
    gateway = await start_gateway(registry=tmp_path / "registry", tokens_file=tokens)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        admin = fleet_pb2_grpc.AdminServiceStub(channel)
        viewer = call_metadata("viewer-token-0123456789")
        assert (await admin.FleetStatus(fleet_pb2.FleetStatusRequest(),
                                        metadata=viewer)).json == "[]"
        assert not (await admin.ListModels(fleet_pb2.ListModelsRequest(),
                                           metadata=viewer)).models
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.SetRollout(fleet_pb2.RolloutRequest(action="promote", name="digits"),
                                   metadata=viewer)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "viewer role may not call" in err.value.details()
        for odd in (("authorization", "Bearer None"),
                    ("authorization", "Bearer op-secret"),
                    ("authorization", f"Bearer {hash_token('viewer-token-0123456789')}")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.FleetStatus(fleet_pb2.FleetStatusRequest(), metadata=(odd,))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.details() == "unknown bearer token"
            await admin.FleetStatus(fleet_pb2.FleetStatusRequest(),
                                    metadata=call_metadata("op-secret-012345"))


def test_a_tokens_file_with_a_null_token_stops_the_gateway(tmp_path) -> None:
    """A null list item (once the operator token "None") refuses the gateway's start with
    the file and the item named."""
    from edgecloud.cloud_gateway.app import GatewayApp
    from edgecloud.cloud_gateway.settings import GatewaySettings
    from edgecloud.core.errors import InvalidInput

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators:\n  -\n  - op-secret-012345\n")
    app = GatewayApp(GatewaySettings(listen="127.0.0.1:0", data_dir=tmp_path / "gw",
                                     tokens_file=tokens))
    with pytest.raises(InvalidInput) as err:
        asyncio.run(app.start())
    assert "operators item 1 is empty (null)" in err.value.message
    assert str(tokens) in err.value.message
    assert not (tmp_path / "gw").exists()


@pytest.mark.e2e
async def test_agents_fetch_only_the_artifacts_of_their_own_assignment(
        start_gateway, tmp_path, digits_dir) -> None:
    """An agent token fetches its assigned model and policy but neither the cloud model nor
    a candidate that its labels do not select (PERMISSION_DENIED naming the artifact); with
    the selected labels it gets the candidate, published after this replica last looked at
    the registry; an operator fetches anything."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-secret-012345]\nagents: {ag-secret-012345: agent-0}\n")
    registry = tmp_path / "registry"
    edge = publish_model(registry, "digits", digits_dir / "edge.onnx", "edge", version="1")
    cloud = publish_model(registry, "digits", digits_dir / "cloud.onnx", "cloud", version="1")
    policy = publish_policy(registry, digits_dir / "policy.yaml")
    gateway = await start_gateway(registry=registry, tokens_file=tokens,
                                  registry_poll_ms=60_000)
    candidate = publish_model(registry, "digits",
                              digits_like_model(tmp_path / "edge2.onnx", "softmax", seed=3),
                              "edge", version="2")
    RegistryOperator(registry).rollout("start", "digits", version="2", percent=100.0,
                                       selector={"site": "berlin"})

    async def fetch(token: str, digest: str, labels: dict | None = None) -> int:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stream = fleet_pb2_grpc.FleetServiceStub(channel).FetchArtifact(
                fleet_pb2.FetchRequest(digest=digest, labels=labels or {}),
                metadata=call_metadata(token))
            return sum([len(chunk.data) async for chunk in stream])

    assert await fetch("ag-secret-012345", edge["digest"]) == \
        (digits_dir / "edge.onnx").stat().st_size
    assert await fetch("ag-secret-012345", policy["digest"]) > 0
    for digest in (cloud["digest"], candidate["digest"], "sha256:" + "0" * 64):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fetch("ag-secret-012345", digest)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "is not in the assignment of agent agent-0" in err.value.details()
    assert await fetch("ag-secret-012345", candidate["digest"], {"site": "berlin"}) > 0
    assert await fetch("op-secret-012345", cloud["digest"]) == \
        (digits_dir / "cloud.onnx").stat().st_size


def test_tokens_over_plaintext_off_loopback_are_warned_about(tmp_path) -> None:
    """A gateway taking tokens, or an agent sending one, without TLS on an address other
    machines reach logs tokens_over_plaintext; loopback, TLS, or (gateway) a TLS proxy in
    front do not."""
    from structlog.testing import capture_logs

    from edgecloud.cloud_gateway.app import warn_if_tokens_travel_in_plaintext
    from edgecloud.cloud_gateway.settings import GatewaySettings
    from edgecloud.edge_agent.app import warn_if_token_travels_in_plaintext
    from edgecloud.edge_agent.settings import AgentSettings

    files = {"tokens_file": tmp_path / "tokens.yaml"}
    gateways = [({"listen": "0.0.0.0:8001"}, True), ({"listen": "10.1.2.3:8001"}, True),
                ({"listen": "127.0.0.1:8001"}, False),
                ({"listen": "0.0.0.0:8001", "behind_tls_proxy": True}, False),
                ({"listen": "0.0.0.0:8001", "tls_cert": tmp_path / "c",
                  "tls_key": tmp_path / "k"}, False)]
    for fields, loud in gateways:
        with capture_logs() as logs:
            s = GatewaySettings(data_dir=tmp_path, **files, **fields)
            assert warn_if_tokens_travel_in_plaintext(s) is loud, fields
        assert any(e["event"] == "tokens_over_plaintext" and e["log_level"] == "warning"
                   for e in logs) is loud
    token = {"token_file": tmp_path / "agent.token"}
    agents = [({"gateway": "gw.example:8001", **token}, True),
              ({"gateway": "[::1]:8001", **token}, False),
              ({"gateway": "gw.example:8001", "tls_ca": tmp_path / "ca.pem", **token}, False),
              ({"gateway": "gw.example:8001"}, False)]
    for fields, loud in agents:
        with capture_logs() as logs:
            s = AgentSettings(data_dir=tmp_path, **fields)
            assert warn_if_token_travels_in_plaintext(s) is loud, fields
        assert any(e["event"] == "tokens_over_plaintext" for e in logs) is loud
