"""Models and policies flow down to the fleet: real gateways and agents on loopback."""

from __future__ import annotations

import asyncio
import json

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

from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.rollouts import bucket
from edgecloud.core import codec
from edgecloud.core.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from edgecloud.core.signing import generate_keypair
from edgecloud.core.tensors import InferRequest

TASK = "digits"


@pytest.fixture
def keys(tmp_path):
    """An operator key pair, and a second (untrusted) one."""
    private, public = generate_keypair(tmp_path / "keys")
    other, _ = generate_keypair(tmp_path / "other-keys")
    return {"private": private, "public": public, "other": other}


async def fleet(start_gateway, start_agent, tmp_path, n_agents=3, *, labels=None,
                trust_key=None, registry=None, gateways=None):
    """A gateway on a registry and agents that take everything from the fleet."""
    registry = registry or tmp_path / "registry"
    gateways = gateways or [await start_gateway(models={}, registry=registry,
                                                registry_poll_ms=50)]
    agents = []
    for i in range(n_agents):
        gw = gateways[i % len(gateways)]
        agents.append(await start_agent(
            gw.address, models={}, policies=[], agent_id=f"agent-{i}",
            labels=(labels[i] if labels else {}), status_interval_s=0.2,
            trust_key=trust_key, reconnect_max_s=0.5,
        ))
    return registry, gateways, agents


async def seed(registry, digits_dir, keys=None):
    """Publish edge v1, cloud v1 and the policy."""
    key = keys["private"] if keys else None
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="1", key=key)
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "cloud.onnx", "cloud",
                            version="1", key=key)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml", key=key)


def agent_status(registry, agent_id):
    for status in Registry(registry).agent_statuses():
        if status.get("agent_id") == agent_id:
            return status
    return {}


def reported_version(registry, agent_id):
    tasks = agent_status(registry, agent_id).get("tasks") or [{}]
    return tasks[0].get("model_version")


def last_swap_reason(registry, agent_id):
    return (agent_status(registry, agent_id).get("last_swap") or {}).get("reason", "")


@pytest.mark.e2e
async def test_publish_swaps_every_agent_without_failed_requests(
        start_gateway, start_agent, channels, tmp_path, digits_dir, digits_test, onnx_reference):
    """A new edge version published while clients stream through 3 agents reaches all of
    them; no request fails, and answers switch to the new model."""
    registry, _, agents = await fleet(start_gateway, start_agent, tmp_path)
    await seed(registry, digits_dir)
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), what="v1")
    x, _ = digits_test
    failures: list[BaseException] = []
    answers: list[tuple[int, str, np.ndarray]] = []
    stop = asyncio.Event()

    async def client(agent):
        stub = channels(agent.address)
        i = 0
        while not stop.is_set():
            row = x[i % len(x)][None]
            request = codec.encode_infer_request(InferRequest(
                model_name=TASK, inputs={"pixels": row}, parameters={"route": "edge"}))
            try:
                reply = codec.decode_infer_response(await stub.ModelInfer(request, timeout=5))
                answers.append((i % len(x), str(reply.parameters["model_version"]),
                                reply.outputs["probabilities"][0]))
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)
            i += 1

    clients = [asyncio.create_task(client(a)) for a in agents]
    await wait_until(lambda: len(answers) >= 30, what="answers from v1")
    # Version 2 is a different network with the same signature (the cloud model).
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "cloud.onnx", "edge",
                            version="2", promote=True)
    await wait_until(lambda: all(running_version(a) == "2" for a in agents), what="v2")
    seen = len(answers)
    await wait_until(lambda: len(answers) >= seen + 30, what="answers from v2")
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    versions = [v for _, v, _ in answers]
    assert "1" in versions and "2" in versions
    for row, version, probs in answers:
        expected = onnx_reference("edge" if version == "1" else "cloud", x[row][None])[0]
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    await wait_until(lambda: all(reported_version(registry, f"agent-{i}") == "2"
                                 for i in range(3)), what="status reports")


def _flip(path):
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.e2e
async def test_bad_artifacts_are_refused_and_reported(start_gateway, start_agent, tmp_path,
                                                      digits_dir, keys):
    """Corrupted, truncated, wrongly signed, unsigned, NaN-producing and crashing versions
    are each refused; the agent keeps serving v1 and its status shows the reason."""
    registry, _, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=1,
                                      trust_key=keys["public"])
    agent = agents[0]
    await seed(registry, digits_dir, keys)
    await wait_until(lambda: running_version(agent) == "1", what="v1")
    reg = Registry(registry)
    nan_model = digits_like_model(tmp_path / "nan.onnx", "nan")
    good = digits_dir / "cloud.onnx"
    cases = [
        ("2", good, keys["private"], _flip, "digest mismatch"),
        ("3", good, keys["private"], _truncate, "truncated"),
        ("4", good, keys["other"], None, "signature"),
        ("5", good, None, None, "signature"),
        ("6", nan_model, keys["private"], None, "NaN"),
        ("7", digits_like_model(tmp_path / "crash.onnx", "crash"), keys["private"], None,
         "failed to run"),
    ]
    for version, path, key, mutate, reason in cases:
        await asyncio.to_thread(publish_model, registry, TASK, path, "edge", version=version,
                                key=key, describe_as=good if reason == "failed to run" else None)
        if mutate is not None:
            mutate(reg.blob_path(reg.model_versions(TASK)[version].manifest.digest))
        await asyncio.to_thread(reg.set_rollout, "start", TASK, version=version,
                                percent=100.0, max_failures=50)
        await wait_until(
            lambda v=version, r=reason: (agent_status(registry, "agent-0").get("last_swap")
                                         or {}).get("version") == v
            and r in last_swap_reason(registry, "agent-0"),
            what=f"v{version} refused for {reason}",
        )
        assert running_version(agent) == "1"
    assert set(reg.rollout(TASK).failures) == {"agent-0"}


@pytest.mark.e2e
async def test_publications_that_cannot_be_right_are_refused(tmp_path, digits_dir):
    """A model that does not fit the task, an invalid manifest, a changed version and a
    rollout to a missing version each get a clear error; nothing is stored."""
    registry = tmp_path / "registry"
    await seed(registry, digits_dir)
    reg = Registry(registry)
    generation = reg.generation()
    narrow = digits_like_model(tmp_path / "narrow.onnx", "softmax", inputs=32)
    with pytest.raises(FailedPrecondition, match="signature"):
        publish_model(registry, TASK, narrow, "edge", version="9")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        reg.publish_model(b"{not json", b"", [b"x"])
    with pytest.raises(AlreadyExists, match="already exists"):
        publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    with pytest.raises(NotFound, match="no version '7'"):
        reg.set_rollout("start", TASK, version="7", percent=10)
    assert reg.generation() == generation
    assert list(reg.model_versions(TASK)) == ["1"]


@pytest.mark.e2e
async def test_rollout_with_selector_promote_and_rollback(start_gateway, start_agent,
                                                          tmp_path, digits_dir):
    """A 50% rollout with a selector gives the candidate to exactly the agents the hash
    and selector pick; promote gives it to all; a later rollback returns all to stable."""
    labels = [{"site": "a"}] * 4 + [{"site": "b"}] * 2
    registry, _, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=6,
                                      labels=labels)
    await seed(registry, digits_dir)
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), what="v1")
    reg = Registry(registry)
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "cloud.onnx", "edge",
                            version="2")
    await asyncio.to_thread(reg.set_rollout, "start", TASK, version="2", percent=50.0,
                            selector={"site": "a"})
    expected = {f"agent-{i}": ("2" if labels[i]["site"] == "a"
                               and bucket(TASK, f"agent-{i}") < 50 else "1")
                for i in range(6)}
    assert set(expected.values()) == {"1", "2"}, "pick ids so both sides are exercised"
    await wait_until(lambda: {a.settings.agent_id: running_version(a) for a in agents}
                     == expected, what="rollout")
    await asyncio.to_thread(reg.set_rollout, "promote", TASK)
    await wait_until(lambda: all(running_version(a) == "2" for a in agents), what="promote")
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="3")
    # Same bytes as version 1 but a new version: the hash picks some agents.
    await asyncio.to_thread(reg.set_rollout, "start", TASK, version="3", percent=100.0)
    await wait_until(lambda: all(running_version(a) == "3" for a in agents), what="v3")
    await asyncio.to_thread(reg.set_rollout, "rollback", TASK)
    await wait_until(lambda: all(running_version(a) == "2" for a in agents), what="rollback")


@pytest.mark.e2e
async def test_failing_candidate_halts_rollout_by_itself(start_gateway, start_agent, tmp_path,
                                                         digits_dir):
    """A candidate that fails the smoke test everywhere halts its rollout once failures
    pass the limit, and every agent is assigned (and runs) the stable version."""
    registry, _, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=3)
    await seed(registry, digits_dir)
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), what="v1")
    reg = Registry(registry)
    bad = digits_like_model(tmp_path / "nan.onnx", "nan")
    await asyncio.to_thread(publish_model, registry, TASK, bad, "edge", version="2")
    await asyncio.to_thread(reg.set_rollout, "start", TASK, version="2", percent=100.0,
                            max_failures=2)
    await wait_until(lambda: reg.rollout(TASK).state == "halted", what="halt")
    record = reg.rollout(TASK)
    assert len(record.failures) >= 2
    assert all("NaN" in reason for reason in record.failures.values())
    assert all(running_version(a) == "1" for a in agents)
    from edgecloud.cloud_gateway.rollouts import assignment_for

    snapshot = reg.snapshot()
    for i in range(3):
        assert assignment_for(snapshot, f"agent-{i}", {}).models[0].manifest.version == "1"


@pytest.mark.e2e
async def test_two_replicas_share_one_registry(start_gateway, start_agent, tmp_path,
                                               digits_dir):
    """Agents split over two gateway replicas on one registry directory all receive a
    publication made through either replica's admin service."""
    registry = tmp_path / "registry"
    gateways = [await start_gateway(models={}, registry=registry, registry_poll_ms=50,
                                    replica=f"replica-{i}") for i in range(2)]
    _, _, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=4,
                               registry=registry, gateways=gateways)
    await seed(registry, digits_dir)
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), what="v1")
    from edgecloud.core.artifacts import build_model_manifest
    from edgecloud.operations import GatewayOperator

    manifest = build_model_manifest(digits_dir / "cloud.onnx", name=TASK, version="2",
                                    target="edge").canonical()
    op = GatewayOperator(gateways[1].address)
    try:
        await asyncio.to_thread(op.publish_model, manifest, b"", digits_dir / "cloud.onnx",
                                True)
        await wait_until(lambda: all(running_version(a) == "2" for a in agents), what="v2")
        statuses = await asyncio.to_thread(op.fleet_status)
    finally:
        op.close()
    replicas = {s["agent_id"]: s["replica"] for s in statuses}
    assert set(replicas.values()) == {"replica-0", "replica-1"}
    assert len(replicas) == 4


@pytest.mark.e2e
async def test_agent_restarted_offline_serves_last_verified(start_gateway, start_agent,
                                                            tmp_path, digits_dir, keys):
    """An agent restarted while the gateway is gone comes up on the last model and policy
    it had verified, and answers at the edge."""
    registry, gateways, agents = await fleet(start_gateway, start_agent, tmp_path,
                                             n_agents=1, trust_key=keys["public"])
    await seed(registry, digits_dir, keys)
    await wait_until(lambda: running_version(agents[0]) == "1", what="v1")
    data_dir = agents[0].settings.data_dir
    address = gateways[0].address
    await agents[0].stop(0.1)
    await gateways[0].stop(0.1)
    again = await start_agent(address, models={}, policies=[], agent_id="agent-0",
                              data_dir=data_dir, trust_key=keys["public"])
    assert running_version(again) == "1"
    request = codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"pixels": np.zeros((1, 64), np.float32)}))
    async with grpc.aio.insecure_channel(again.address) as channel:
        from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    assert codec.decode_infer_response(reply).parameters["model_version"] == "1"
    # Tampering with the stored model is noticed at the next start: nothing is served.
    await again.stop(0.1)
    model_digest = json.loads((data_dir / "store" / "state.json").read_text())[
        "tasks"][TASK]["model"]["digest"]
    (data_dir / "store" / "blobs" / model_digest.removeprefix("sha256:")).write_bytes(b"x")
    third = await start_agent(address, models={}, policies=[], agent_id="agent-0",
                              data_dir=data_dir, trust_key=keys["public"])
    assert running_version(third) is None


def replica_serving(registry, replica):
    """What a replica last wrote that it serves, per model."""
    for status in Registry(registry).replica_statuses():
        if status["replica"] == replica:
            return status["models"]
    return {}


async def cloud_answer(stub, x):
    request = codec.encode_infer_request(InferRequest(
        model_name=TASK, inputs={"pixels": x}, parameters={"route": "cloud"}))
    return codec.decode_infer_response(await stub.ModelInfer(request, timeout=5))


@pytest.mark.e2e
async def test_a_new_cloud_version_is_a_candidate_until_promoted(
        start_gateway, start_agent, channels, tmp_path, digits_dir, digits_test,
        onnx_reference):
    """A cloud version published after the first answers no request until it is
    promoted; then it is loaded, smoke-tested and served, escalations go to it without an
    error in between, and the replica's record says what it serves."""
    registry, gateways, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=1)
    await seed(registry, digits_dir)
    gateway = gateways[0]
    await wait_until(lambda: gateway.service.served_version(TASK) == "1", what="cloud v1")
    await wait_until(lambda: running_version(agents[0]) == "1", what="edge v1")
    # Version 2 of the cloud model is the edge network: easy to tell apart.
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "cloud",
                            version="2")
    reg = Registry(registry)
    await wait_until(lambda: gateway.hub.snapshot.generation == reg.generation(),
                     what="publication seen")
    assert reg.rollout(TASK, "cloud").candidate == "2"
    x, _ = digits_test
    stub = channels(agents[0].address)
    assert (await cloud_answer(stub, x[:5])).parameters["cloud_model_version"] == "1"
    assert replica_serving(registry, gateway.hub.replica)[TASK] == {
        "version": "1", "candidate": None, "percent": 0.0}
    await asyncio.to_thread(reg.set_rollout, "promote", TASK, target="cloud")
    await wait_until(lambda: gateway.service.served_version(TASK) == "2", what="cloud v2")
    reply = await cloud_answer(stub, x[:5])
    assert reply.parameters["cloud_model_version"] == "2"
    np.testing.assert_allclose(reply.outputs["probabilities"], onnx_reference("edge", x[:5]),
                               rtol=1e-5, atol=1e-6)
    assert replica_serving(registry, gateway.hub.replica)[TASK]["version"] == "2"


@pytest.mark.e2e
async def test_cloud_rollout_shares_requests_and_rolls_back(start_gateway, start_agent,
                                                            channels, tmp_path, digits_dir,
                                                            digits_test):
    """A cloud candidate rolled out to 100% of the requests answers them while version 1
    stays stable; a request naming version 1 still gets it; a rollback returns every
    request to version 1 and the replica's record follows."""
    registry, gateways, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=1)
    await seed(registry, digits_dir)
    gateway = gateways[0]
    await wait_until(lambda: running_version(agents[0]) == "1", what="edge v1")
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "cloud",
                            version="2")
    reg = Registry(registry)
    await asyncio.to_thread(reg.set_rollout, "start", TASK, version="2", percent=100.0,
                            target="cloud")
    replica = gateway.hub.replica
    await wait_until(lambda: replica_serving(registry, replica).get(TASK, {}).get("candidate")
                     == "2", what="candidate served")
    assert replica_serving(registry, replica)[TASK] == {
        "version": "1", "candidate": "2", "percent": 100.0}
    x, _ = digits_test
    stub = channels(agents[0].address)
    assert {(await cloud_answer(stub, x[i:i + 1])).parameters["cloud_model_version"]
            for i in range(5)} == {"2"}
    direct = channels(gateway.address)
    pinned = codec.encode_infer_request(InferRequest(
        model_name=TASK, model_version="1", inputs={"pixels": x[:1]}))
    assert codec.decode_infer_response(await direct.ModelInfer(pinned, timeout=5)
                                       ).model_version == "1"
    await asyncio.to_thread(reg.set_rollout, "rollback", TASK, target="cloud")
    await wait_until(lambda: replica_serving(registry, replica)[TASK]["candidate"] is None,
                     what="rollback")
    assert (await cloud_answer(stub, x[:1])).parameters["cloud_model_version"] == "1"


@pytest.mark.e2e
async def test_a_cloud_candidate_that_fails_to_load_counts_against_its_rollout(
        start_gateway, tmp_path, digits_dir):
    """A cloud candidate whose smoke test fails is never served; the replica's failure is
    recorded in the cloud rollout, which halts at its limit."""
    registry = tmp_path / "registry"
    await seed(registry, digits_dir)
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50)
    bad = digits_like_model(tmp_path / "nan.onnx", "nan")
    await asyncio.to_thread(publish_model, registry, TASK, bad, "cloud", version="2")
    reg = Registry(registry)
    await asyncio.to_thread(reg.set_rollout, "start", TASK, version="2", percent=50.0,
                            max_failures=1, target="cloud")
    await wait_until(lambda: reg.rollout(TASK, "cloud").state == "halted", what="halt")
    assert "NaN" in reg.rollout(TASK, "cloud").failures[gateway.hub.replica]
    assert gateway.service.serving()[TASK] == {"version": "1", "candidate": None,
                                               "percent": 0.0}


@pytest.mark.e2e
async def test_same_bytes_as_a_new_version_reach_fleet_status(start_gateway, start_agent,
                                                             tmp_path, digits_dir):
    """The same model bytes published as version 2 and promoted are served and reported
    as version 2: a version is an identity, not only a digest."""
    registry, _, agents = await fleet(start_gateway, start_agent, tmp_path, n_agents=1)
    await seed(registry, digits_dir)
    await wait_until(lambda: reported_version(registry, "agent-0") == "1", what="v1")
    await asyncio.to_thread(publish_model, registry, TASK, digits_dir / "edge.onnx", "edge",
                            version="2", promote=True)
    await wait_until(lambda: reported_version(registry, "agent-0") == "2", what="v2 reported")
    assert running_version(agents[0]) == "2"
