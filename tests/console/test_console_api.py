"""The console's page and JSON calls over real HTTP: who may read, who may act, what errors say."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
import yaml
from fleet_helpers import digits_like_model, publish_model, publish_policy, wait_until

from edgecloud.cloud_gateway.console.views import image_of
from edgecloud.cloud_gateway.registry import Registry

TASK = "digits"
OPERATOR = "operator-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"
AGENT = "agent-token-0123456789abcdef"


async def call(address: str, path: str, token: str | None = None, *, method: str = "GET",
               body: bytes | None = None, content_type: str = "application/json"):
    """Status, headers and decoded body (JSON when it is JSON) of one request."""
    headers = {"Content-Type": content_type} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(
            method, f"http://{address}{path}", data=body, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, response.headers, await response.json()
        return response.status, response.headers, await response.text()


async def seed(tmp_path, digits_dir):
    """A registry with edge versions 1 and 2, cloud version 1 and the bundled policy."""
    registry = tmp_path / "registry"
    for path, target, version in ((digits_dir / "edge.onnx", "edge", "1"),
                                  (digits_dir / "cloud.onnx", "cloud", "1"),
                                  (digits_like_model(tmp_path / "v2.onnx", "softmax"), "edge",
                                   "2")):
        await asyncio.to_thread(publish_model, registry, TASK, path, target, version=version)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    return registry


async def test_an_open_gateway_lets_everyone_in_as_operator(start_gateway, tmp_path,
                                                            digits_dir):
    """Without tokens the page and every call answer anyone, as operator, and the session
    says the gateway is open; the page is served with a policy that forbids other origins."""
    registry = await seed(tmp_path, digits_dir)
    gateway = await start_gateway(models={}, registry=registry, http_listen="127.0.0.1:0")
    address = gateway.http_address
    status, headers, page = await call(address, "/console")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert 'src="/console/static/console.js"' in page and "http" not in page.split("<body>")[0]
    status, headers, _ = await call(address, "/console/static/console.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, _, body = await call(address, "/console/static/secrets.txt")
    assert status == 404 and "no console file" in body["error"]
    status, _, session = await call(address, "/console/api/session")
    assert status == 200
    assert (session["role"], session["open"], session["can_act"]) == ("operator", True, True)
    status, _, models = await call(address, "/console/api/models")
    assert status == 200 and models["trust_key"] is None
    (digits,) = models["models"]
    assert [(v["version"], v["target"], v["role"]) for v in digits["versions"]] == [
        ("2", "edge", ""), ("1", "edge", "stable"), ("1", "cloud", "stable")]
    assert {(v["version"], v["target"]): v["signature"]["state"]
            for v in digits["versions"]} == {("2", "edge"): "none", ("1", "edge"): "none",
                                             ("1", "cloud"): "none"}
    status, _, policies = await call(address, "/console/api/policies")
    assert status == 200
    (policy,) = policies["policies"]
    assert policy["versions"][0]["assigned"] and policy["versions"][0]["policy"]["curve"] is None


async def test_tokens_decide_who_reads_and_who_acts(start_gateway, tmp_path, digits_dir):
    """No token: 401; an agent's token: 403; a viewer reads but its action is 403; an
    operator's action goes through the registry, and a bad one is refused with its reason
    (400 for what the console does not do or cannot read, 404 for an unknown model, 409 for
    an action the rollout's state refuses, 415 for a body that is not JSON)."""
    registry = await seed(tmp_path, digits_dir)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"operators": {OPERATOR: "alice"}, "viewers": [VIEWER],
                                      "agents": {AGENT: "cam-1"}}))
    gateway = await start_gateway(models={}, registry=registry, http_listen="127.0.0.1:0",
                                  tokens_file=tokens, registry_poll_ms=50)
    address = gateway.http_address
    status, headers, body = await call(address, "/console/api/agents")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert body == {"error": "missing bearer token"}
    status, _, body = await call(address, "/console/api/agents", "x" * 20)
    assert (status, body["error"]) == (401, "unknown bearer token")
    status, _, body = await call(address, "/console/api/rollouts", AGENT)
    assert status == 403 and "agent role" in body["error"]
    status, _, session = await call(address, "/console/api/session", VIEWER)
    assert (session["role"], session["open"], session["can_act"]) == ("viewer", False, False)
    status, _, session = await call(address, "/console/api/session", OPERATOR)
    assert (session["role"], session["name"], session["can_act"]) == ("operator", "alice", True)
    for page in ("agents", "rollouts", "models", "policies", "examples"):
        status, _, _ = await call(address, f"/console/api/{page}", VIEWER)
        assert status == 200, page

    start = f"/console/api/rollouts/{TASK}"
    body = b'{"target": "edge"}'
    status, _, _ = await call(address, f"{start}/rollback", VIEWER, method="POST", body=body)
    assert status == 403
    status, _, _ = await call(address, f"{start}/rollback", method="POST", body=body)
    assert status == 401
    refusals = [
        (f"{start}/start", body, "application/json", 400, "the console can promote"),
        (f"{start}/rollback", body, "application/json", 409, "has no candidate"),
        (f"{start}/rollback", b'{"target": "moon"}', "application/json", 400, "target must"),
        (f"{start}/rollback", b"[1, 2", "application/json", 400, "not JSON"),
        (f"{start}/rollback", b'["edge"]', "application/json", 400, "must be"),
        (f"{start}/rollback", body, "text/plain", 415, "as JSON"),
        ("/console/api/rollouts/nothing-here/rollback", body, "application/json", 404,
         "no published edge versions"),
        ("/console/api/rollouts/..%2Fx/rollback", body, "application/json", 400, "not valid"),
    ]
    for path, payload, kind, code, message in refusals:
        status, _, answer = await call(address, path, OPERATOR, method="POST", body=payload,
                                       content_type=kind)
        assert (status, message in answer["error"]) == (code, True), (path, answer)
    assert Registry(registry).rollout(TASK).state == "none"

    await asyncio.to_thread(Registry(registry).set_rollout, "start", TASK, version="2",
                            percent=50.0)
    for action, state in (("pause", "paused"), ("resume", "active"), ("promote", "promoted")):
        status, _, answer = await call(address, f"{start}/{action}", OPERATOR, method="POST",
                                       body=body)
        assert status == 200 and answer["rollout"]["state"] == state
        assert Registry(registry).rollout(TASK).state == state
    record = Registry(registry).rollout(TASK)
    assert record.stable == "2" and record.candidate is None


async def test_a_halted_rollout_says_why_and_what_can_be_done(start_gateway, tmp_path,
                                                              digits_dir):
    """Once failed swaps halt a rollout, its entry carries the halt's note and every
    failure, offers only promote and rollback, and counts progress from the agents'
    reports; an open gateway's rollback needs no token."""
    registry_dir = await seed(tmp_path, digits_dir)
    registry = Registry(registry_dir)
    registry.set_rollout("start", TASK, version="2", percent=100.0, max_failures=2)
    for agent in ("cam-1", "cam-2"):
        registry.write_agent_status(agent, {"agent_id": agent, "labels": {},
                                            "tasks": [{"name": TASK, "model_version": "1"}]})
        registry.record_swap_failure(TASK, "2", agent, "smoke test: output is not finite")
    gateway = await start_gateway(models={}, registry=registry_dir, http_listen="127.0.0.1:0",
                                  registry_poll_ms=50)

    async def edge_entry() -> dict:
        _, _, answer = await call(gateway.http_address, "/console/api/rollouts")
        return next(r for r in answer["rollouts"] if r["target"] == "edge")

    entry = await edge_entry()
    assert entry["state"] == "halted"
    assert entry["halt_reason"] == "halted 2: 2 failed swaps; back to 1"
    assert entry["failures"] == {"cam-1": "smoke test: output is not finite",
                                 "cam-2": "smoke test: output is not finite"}
    assert entry["actions"] == ["promote", "rollback"]
    # Halted: the candidate is assigned to nobody; both agents report the stable version.
    assert entry["progress"] == {"agents": 2, "assigned": 0, "running": 0,
                                 "versions": {"1": 2}}
    status, _, _ = await call(gateway.http_address, f"/console/api/rollouts/{TASK}/rollback",
                              method="POST", body=b"{}")
    assert status == 200
    await wait_until(lambda: Registry(registry_dir).rollout(TASK).state == "rolled_back", 5,
                     "rolled back")


@pytest.mark.parametrize(("shape", "drawn"), [
    ((1, 64), (8, 8)), ((64,), (8, 8)), ((1, 3, 4), (3, 4)), ((1, 1, 28, 28), (28, 28)),
    ((1, 10), None), ((2, 3, 4), None), ((1, 128, 128), None), ((0,), None)])
def test_an_input_is_drawn_when_it_is_a_picture(shape, drawn):
    """A row is drawn when, leading ones aside, it is 2-D or a square number of values (and
    not too large); NaN values arrive as null."""
    values = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    if values.size:
        values.flat[0] = np.nan
    image = image_of(values)
    if drawn is None:
        assert image is None
        return
    assert (image["rows"], image["cols"]) == drawn
    assert image["values"][0] is None and image["values"][1:] == list(range(1, values.size))
    assert image_of(np.array(["a"] * 4)) is None
