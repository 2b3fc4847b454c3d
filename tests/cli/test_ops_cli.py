"""Operator commands end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def edgecloud(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.e2e
def test_publish_rollout_and_list_on_a_registry_directory(tmp_path: Path, digits_dir: Path):
    """Keys, signed publications, a rollout and the listing work on --registry, and
    mistakes get one clear line and exit code 2."""
    reg = str(tmp_path / "registry")
    assert edgecloud("keys", "generate", "--out", str(tmp_path / "k")).returncode == 0
    again = edgecloud("keys", "generate", "--out", str(tmp_path / "k"))
    assert again.returncode == 2 and "already exists" in again.stderr
    key = str(tmp_path / "k" / "operator.key")
    first = edgecloud("models", "publish", "digits", str(digits_dir / "edge.onnx"),
                      "--target", "edge", "--key", key, "--registry", reg)
    assert first.returncode == 0, first.stderr
    assert "version 1" in first.stdout and "signed" in first.stdout
    second = edgecloud("models", "publish", "digits", str(digits_dir / "cloud.onnx"),
                       "--target", "edge", "--key", key, "--registry", reg)
    assert "version 2" in second.stdout
    policy = edgecloud("policy", "publish", "digits", str(digits_dir / "policy.yaml"),
                       "--key", key, "--registry", reg)
    assert policy.returncode == 0, policy.stderr
    roll = edgecloud("models", "rollout", "digits", "2", "--percent", "25", "--selector",
                     "site=a", "--max-failures", "2", "--registry", reg)
    assert roll.returncode == 0, roll.stderr
    assert "candidate 2 at 25%" in roll.stdout
    listing = json.loads(edgecloud("models", "list", "--json", "--registry", reg).stdout)
    assert [v["version"] for v in listing["digits"]["versions"]] == ["1", "2"]
    assert listing["digits"]["rollout"]["candidate"] == "2"
    assert edgecloud("models", "promote", "digits", "--registry", reg).returncode == 0
    listing = json.loads(edgecloud("models", "list", "--json", "--registry", reg).stdout)
    assert listing["digits"]["rollout"]["stable"] == "2"

    for args, fragment in (
        (["models", "rollout", "digits", "9", "--percent", "10"], "no version '9'"),
        (["models", "rollout", "digits", "1", "--percent", "140"], "--percent"),
        (["models", "rollback", "digits"], "no candidate"),
        (["models", "publish", "digits", str(tmp_path / "missing.onnx"), "--target", "edge"],
         "does not exist"),
        (["models", "publish", "digits", str(digits_dir / "edge.onnx"), "--target", "edge",
          "--key", str(tmp_path / "k" / "operator.pub")], "private key"),
        (["policy", "publish", "other", str(digits_dir / "policy.yaml")], "not 'other'"),
    ):
        result = edgecloud(*args, "--registry", reg)
        assert result.returncode == 2, (args, result.stderr)
        assert fragment in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.e2e
async def test_fleet_status_through_the_gateway(start_gateway, start_agent, tmp_path,
                                                digits_dir):
    """`fleet status --json` through a gateway lists each agent with its replica, versions,
    last swap, traffic and drift fields."""
    import asyncio

    from fleet_helpers import publish_model, publish_policy, wait_until

    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50,
                                  replica="r1")
    agent = await start_agent(gateway.address, models={}, policies=[], agent_id="cam-7",
                              labels={"site": "berlin"}, status_interval_s=0.2)
    await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                            "edge", version="1")
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await wait_until(lambda: agent.service.task_names() == ["digits"], what="task")
    reported = registry / "agents" / "cam-7.json"
    await wait_until(lambda: reported.exists() and '"policy_version": "1"' in
                     reported.read_text(), what="status report")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud", "fleet", "status", "--json", "--gateway",
        gateway.address, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    rows = json.loads(out)
    assert len(rows) == 1
    row = rows[0]
    assert row["agent_id"] == "cam-7" and row["labels"] == {"site": "berlin"}
    assert row["replica"] == "r1" and row["model_version"] == "1"
    assert row["policy_version"] == "1" and row["last_swap"]["ok"]
    assert {"requests", "escalation_rate", "fallbacks", "drift"} <= set(row)


@pytest.mark.e2e
@pytest.mark.parametrize("through", ["registry", "gateway"])
async def test_concurrent_publishers_get_distinct_versions(through, start_gateway, tmp_path,
                                                           digits_dir):
    """Two publishers without a version, publishing at once, get different versions."""
    import asyncio
    import threading

    from edgecloud.operations import GatewayOperator, RegistryOperator, publish_model_file

    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry)
    both_chosen = threading.Barrier(2, timeout=60)

    def publish() -> str:
        op = (RegistryOperator(registry) if through == "registry"
              else GatewayOperator(gateway.address))
        waited = []

        def progress(_: int) -> None:
            if not waited:  # the version is chosen; upload only once the other has chosen
                waited.append(both_chosen.wait())

        try:
            return publish_model_file(op, digits_dir / "edge.onnx", name="digits",
                                      target="edge", progress=progress)["version"]
        finally:
            op.close()

    versions = await asyncio.gather(*(asyncio.to_thread(publish) for _ in range(2)))
    assert sorted(versions) == ["1", "2"]


@pytest.mark.e2e
async def test_data_dir_means_the_gateways_data_directory(start_gateway, tmp_path, digits_dir):
    """`models publish --data-dir DIR` publishes where the gateway started with
    `--data-dir DIR` reads, and `models list --data-dir DIR` shows it."""
    import asyncio

    from fleet_helpers import wait_until

    data_dir = tmp_path / "gateway"
    gateway = await start_gateway(models={}, data_dir=data_dir, registry_poll_ms=50)
    published = await asyncio.to_thread(
        edgecloud, "models", "publish", "digits", str(digits_dir / "edge.onnx"), "--target",
        "edge", "--data-dir", str(data_dir))
    assert published.returncode == 0, published.stderr
    await wait_until(lambda: "digits" in gateway.hub.snapshot.models, what="publication")
    listing = await asyncio.to_thread(edgecloud, "models", "list", "--json", "--data-dir",
                                      str(data_dir))
    assert [v["version"] for v in json.loads(listing.stdout)["digits"]["versions"]] == ["1"]


@pytest.mark.e2e
def test_registry_locations_that_cannot_be_right_are_refused(tmp_path: Path, digits_dir: Path):
    """A read command on a folder without a registry, a gateway data directory given as
    --registry, a registry given as --data-dir and an s3:// URL each exit with code 2 and
    say what to pass; nothing is created."""
    from fleet_helpers import publish_model

    data_dir = tmp_path / "gateway"
    publish_model(data_dir / "registry", "digits", digits_dir / "edge.onnx", "edge",
                  version="1")
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    edge = str(digits_dir / "edge.onnx")
    for args, fragment in (
        (["models", "list", "--registry", str(empty)], "holds no registry"),
        (["fleet", "status", "--registry", str(missing)], "holds no registry"),
        (["models", "promote", "digits", "--data-dir", str(empty)], "holds no registry"),
        (["models", "publish", "digits", edge, "--target", "edge", "--registry", str(data_dir)],
         f"use its registry, {data_dir / 'registry'}"),
        (["models", "list", "--data-dir", str(data_dir / "registry")],
         f"pass --registry {data_dir / 'registry'}"),
        (["models", "list", "--registry", "ftp://bucket/prefix"], "not a registry location"),
    ):
        result = edgecloud(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert fragment in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not list(empty.iterdir()) and not missing.exists()
    assert sorted(p.name for p in data_dir.iterdir()) == ["registry"]


@pytest.mark.e2e
async def test_fleet_status_shows_a_model_waiting_for_its_policy(start_gateway, start_agent,
                                                                 tmp_path, digits_dir):
    """An agent given a model before any policy is published reports the task as waiting
    for its policy, and `fleet status` shows it."""
    import asyncio
    import os

    from fleet_helpers import publish_model, wait_until

    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50)
    await start_agent(gateway.address, models={}, policies=[], agent_id="cam-8",
                      status_interval_s=0.2)
    await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                            "edge", version="1")
    reported = registry / "agents" / "cam-8.json"
    await wait_until(lambda: reported.exists() and '"waiting_for": "policy"' in
                     reported.read_text(), what="status report")

    async def fleet_status(*flags: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecloud", "fleet", "status", *flags, "--gateway",
            gateway.address, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "250"})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    (row,) = json.loads(await fleet_status("--json"))
    assert row["task"] == "digits" and row["model_version"] == "1"
    assert row["waiting_for"] == "policy"
    assert "waiting for policy" in await fleet_status()


@pytest.mark.e2e
def test_publish_says_which_output_holds_the_class_scores(tmp_path: Path) -> None:
    """`models publish` of a default skl2onnx export says which output holds the class
    scores; --scores-output naming a label is refused before anything is published."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export

    reg = str(tmp_path / "registry")
    edge = export("logistic", tmp_path / "edge.onnx")
    published = edgecloud("models", "publish", "iris", str(edge), "--target", "edge",
                          "--registry", reg)
    assert published.returncode == 0, published.stderr
    assert ("class scores: output 'output_probability' (the one float [N, classes] output)"
            in published.stdout)
    cloud = export("forest", tmp_path / "cloud.onnx")
    wrong = edgecloud("models", "publish", "iris", str(cloud), "--target", "cloud",
                      "--scores-output", "output_label", "--registry", reg)
    assert wrong.returncode == 2
    assert "output 'output_label' of cloud model cloud.onnx is INT64[-1]" in wrong.stderr
    listing = json.loads(edgecloud("models", "list", "--json", "--registry", reg).stdout)
    assert [v["target"] for v in listing["iris"]["versions"]] == ["edge"]
def _reported(registry: Path, now: float) -> None:
    """Statuses as three agents reported them: busy with a failed swap behind it, offline
    and waiting for its policy, and just started (drift window nearly empty)."""
    from edgecloud.cloud_gateway.registry import Registry

    reg = Registry(registry)
    reg.write_agent_status("camera-berlin-07", {
        "agent_id": "camera-berlin-07", "labels": {"site": "berlin"}, "replica": "gw-1",
        "last_seen": now - 3, "status_interval_s": 10.0,
        "tasks": [{"name": "digits", "model_version": "12", "policy_version": "3",
                   "requests": "12045", "rows": "20000", "escalated_rows": "2500",
                   "fallback_rows": "31", "drift_status": "stable", "drift_psi": 0.02}],
        "diagnostics": [{"name": "digits", "drift_rows": "500", "drift_min_rows": "50",
                         "fallback_rows_by_reason": {"unavailable": "30",
                                                     "deadline_exceeded": "1"}}],
        "last_swap": {"name": "digits", "version": "12", "kind": "model", "ok": True,
                      "at": now - 100},
        "swap_history": [
            {"name": "digits", "version": "11", "kind": "model", "ok": False,
             "reason": "smoke test: output 'probabilities' holds NaN", "at": now - 200},
            {"name": "digits", "version": "12", "kind": "model", "ok": True, "reason": "",
             "at": now - 100}],
    })
    reg.write_agent_status("cam-8", {
        "agent_id": "cam-8", "labels": {}, "replica": "gw-1", "last_seen": now - 900,
        "status_interval_s": 10.0,
        "tasks": [{"name": "digits", "model_version": "1", "waiting_for": "policy"}]})
    reg.write_agent_status("cam-9", {
        "agent_id": "cam-9", "labels": {}, "replica": "gw-2", "last_seen": now - 2,
        "status_interval_s": 10.0,
        "tasks": [{"name": "digits", "model_version": "1", "policy_version": "1",
                   "requests": "4", "rows": "4", "drift_status": "", "drift_psi": 6.24}],
        "diagnostics": [{"name": "digits", "drift_rows": "4", "drift_min_rows": "50"}]})


def test_fleet_status_reads_at_80_columns(tmp_path: Path) -> None:
    """`fleet status` fits 80 columns and shows offline agents, a task waiting for its
    policy, `insufficient data` for a nearly empty drift window, fallbacks by reason and
    the swap history with the failed swap a later one replaced; `--json` holds the same."""
    import os
    import time

    registry = tmp_path / "registry"
    _reported(registry, time.time())
    env = {**os.environ, "COLUMNS": "80"}
    table = subprocess.run([sys.executable, "-m", "edgecloud", "fleet", "status", "--registry",
                            str(registry)], capture_output=True, text=True, env=env, timeout=60)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "1 offline" in out and "offline" in out
    assert "waiting for" in out and "insufficient" in out and "psi 6.24" not in out
    assert "unavailable" in out and "deadline_exceeded" in out
    assert "digits model 11 FAILED" in out and "holds NaN" in out
    assert "digits model 12 ok" in out
    rows = {r["agent_id"]: r for r in json.loads(edgecloud(
        "fleet", "status", "--json", "--registry", str(registry)).stdout)}
    assert not rows["cam-8"]["online"] and rows["cam-9"]["online"]
    assert rows["cam-9"]["drift"]["status"] == "insufficient_data"
    busy = rows["camera-berlin-07"]
    assert busy["fallbacks_by_reason"] == {"unavailable": 30, "deadline_exceeded": 1}
    assert [(s["version"], s["ok"]) for s in busy["swap_history"]] == [("11", False),
                                                                      ("12", True)]
    wide = subprocess.run([sys.executable, "-m", "edgecloud", "fleet", "status", "--wide",
                           "--registry", str(registry)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert "site=berlin" in wide.stdout and "gw-2" in wide.stdout


def test_fleet_status_with_no_agents_says_so(tmp_path: Path, digits_dir: Path) -> None:
    """With no agent reported yet, `fleet status` says there are none (not an empty table)."""
    from fleet_helpers import publish_model

    registry = tmp_path / "registry"
    publish_model(registry, "digits", digits_dir / "edge.onnx", "edge", version="1")
    result = edgecloud("fleet", "status", "--registry", str(registry))
    assert result.returncode == 0, result.stderr
    assert "no agents" in result.stdout


@pytest.mark.e2e
async def test_agents_report_swap_history_fallback_reasons_and_drift_rows(
        start_gateway, start_agent, channels, tmp_path, digits_dir):
    """Through a real gateway: a failed swap stays in the agent's history after a later
    swap succeeds; rows that fell back are counted by why the cloud failed; a drift window
    below its minimum reads as insufficient data."""
    import asyncio
    import time

    import numpy as np
    from fleet_helpers import digits_like_model, publish_model, publish_policy, wait_until

    from edgecloud.cloud_gateway.registry import Registry
    from edgecloud.core import codec
    from edgecloud.core.tensors import InferRequest
    from edgecloud.operations import fleet_rows

    registry = tmp_path / "registry"
    # The gateway's cloud model fits the task but fails when it runs: every escalation fails.
    crashing = digits_like_model(tmp_path / "crash.onnx", "crash")
    gateway = await start_gateway(models={"digits": crashing}, registry=registry,
                                  registry_poll_ms=50)
    agent = await start_agent(gateway.address, models={}, policies=[], agent_id="cam-1",
                              status_interval_s=0.2)
    reg = Registry(registry)
    await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                            "edge", version="1")
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await wait_until(lambda: agent.service.task_names() == ["digits"], what="task")
    for version, path in (("2", digits_like_model(tmp_path / "nan.onnx", "nan")),
                          ("3", digits_dir / "cloud.onnx")):
        await asyncio.to_thread(publish_model, registry, "digits", path, "edge",
                                version=version)
        await asyncio.to_thread(reg.set_rollout, "start", "digits", version=version,
                                percent=100.0)
        await wait_until(lambda v=version: any(
            s.get("version") == v for s in (reg.agent_status("cam-1") or {}).get(
                "swap_history", [])), what=f"swap to {version} reported")
    stub = channels(agent.address)
    request = codec.encode_infer_request(InferRequest(
        model_name="digits", inputs={"pixels": np.zeros((5, 64), np.float32)},
        parameters={"route": "cloud"}))
    await stub.ModelInfer(request, timeout=5)

    def row() -> dict:
        return fleet_rows([reg.agent_status("cam-1") or {}], time.time())[0]

    await wait_until(lambda: row()["fallbacks_by_reason"], what="fallbacks reported")
    r = row()
    assert r["fallbacks_by_reason"] == {"unavailable": 5} and r["fallbacks"] == 5
    assert [(s["version"], s["ok"]) for s in r["swap_history"] if s["kind"] == "model"] == [
        ("1", True), ("2", False), ("3", True)]
    assert any("NaN" in s["reason"] for s in r["swap_history"] if not s["ok"])
    assert r["drift"]["status"] == "insufficient_data"
    assert r["drift"]["rows"] == 5 and r["drift"]["min_rows"] > 5
    assert r["online"]


@pytest.mark.e2e
async def test_cloud_versions_through_the_command_line(start_gateway, tmp_path, digits_dir):
    """`models publish --target cloud` says a later version is a candidate, `models list`
    shows what each replica serves, and `models rollout/promote --target cloud` move
    the replica's requests to it."""
    import asyncio
    import os

    from fleet_helpers import wait_until

    registry = tmp_path / "registry"
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50,
                                  replica="gw-a")

    async def run(*args: str) -> subprocess.CompletedProcess:
        result = await asyncio.to_thread(edgecloud, *args, "--registry", str(registry))
        assert result.returncode == 0, (args, result.stderr)
        return result

    await run("models", "publish", "digits", str(digits_dir / "cloud.onnx"), "--target",
              "cloud")
    second = await run("models", "publish", "digits", str(digits_dir / "edge.onnx"),
                       "--target", "cloud")
    assert "candidate" in second.stdout and "--target cloud" in second.stdout

    async def poll(expected: dict) -> None:
        """Wait until `models list --json` says replica gw-a serves ``expected``."""
        for _ in range(300):
            listing = json.loads((await run("models", "list", "--json")).stdout)
            served = listing["digits"]["served_by"].get("gw-a", {})
            if all(served.get(k) == v for k, v in expected.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"gw-a serves {served}, not {expected}")

    await wait_until(lambda: gateway.service.served_version("digits") == "1", what="v1")
    await poll({"version": "1", "candidate": None})
    table = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edgecloud", "models", "list", "--registry",
                         str(registry)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200"})
    assert "gw-a" in table.stdout and "candidate 0% of requests" in table.stdout
    rolled = await run("models", "rollout", "digits", "2", "--percent", "40", "--target",
                       "cloud")
    assert "candidate 2 at 40% of requests" in rolled.stdout
    await poll({"version": "1", "candidate": "2", "percent": 40.0})
    await run("models", "promote", "digits", "--target", "cloud")
    await poll({"version": "2", "candidate": None})
    refused = edgecloud("models", "rollout", "digits", "1", "--percent", "10", "--target",
                        "cloud", "--selector", "site=a", "--registry", str(registry))
    assert refused.returncode == 2 and "selector" in refused.stderr


@pytest.mark.e2e
async def test_publishing_unsigned_to_a_gateway_that_trusts_a_key(start_gateway, tmp_path,
                                                                 digits_dir):
    """Publishing without --key to a gateway started with --trust-key says a signature is
    required; a signature by another key says it does not verify; the right key works."""
    import asyncio

    from edgecloud.core.signing import generate_keypair

    private, public = generate_keypair(tmp_path / "keys")
    other, _ = generate_keypair(tmp_path / "other")
    gateway = await start_gateway(models={}, registry=tmp_path / "registry",
                                  trust_key=public)
    publish = ("models", "publish", "digits", str(digits_dir / "edge.onnx"), "--target",
               "edge", "--gateway", gateway.address)
    unsigned = await asyncio.to_thread(edgecloud, *publish)
    assert unsigned.returncode == 2
    assert "a signature is required" in unsigned.stderr and "--key" in unsigned.stderr
    wrong = await asyncio.to_thread(edgecloud, *publish, "--key", str(other))
    assert wrong.returncode == 2 and "does not verify" in wrong.stderr
    signed = await asyncio.to_thread(edgecloud, *publish, "--key", str(private))
    assert signed.returncode == 0, signed.stderr


def test_models_list_marks_a_silent_replica(tmp_path: Path, digits_dir: Path) -> None:
    """A replica whose record of what it serves has not been rewritten for several
    heartbeats is shown as silent: it may have stopped without saying so."""
    import os
    import time

    from fleet_helpers import publish_model

    from edgecloud.cloud_gateway.registry import Registry

    registry = tmp_path / "registry"
    publish_model(registry, "digits", digits_dir / "cloud.onnx", "cloud", version="1")
    reg = Registry(registry)
    models = {"digits": {"version": "1", "candidate": None, "percent": 0.0}}
    reg.write_replica_status("gw-live", {"replica": "gw-live", "updated": time.time(),
                                         "models": models})
    reg.write_replica_status("gw-gone", {"replica": "gw-gone", "updated": time.time() - 3600,
                                         "models": models})
    result = subprocess.run([sys.executable, "-m", "edgecloud", "models", "list",
                             "--registry", str(registry)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "gw-live" in line)
    assert "gw-gone (silent, 60m ago)" in line and "gw-live (silent" not in line


def test_policy_publish_takes_the_next_version(tmp_path: Path, digits_dir: Path) -> None:
    """`policy publish` gives a policy file the registry's next version (the published
    document carries it), so the same tuned file can be published again; --version
    names one, and a taken version is refused."""
    from edgecloud.cloud_gateway.registry import Registry
    from edgecloud.router import parse_policy

    reg = str(tmp_path / "registry")
    file = str(digits_dir / "policy.yaml")
    first = edgecloud("policy", "publish", "digits", file, "--registry", reg)
    second = edgecloud("policy", "publish", "digits", file, "--registry", reg)
    named = edgecloud("policy", "publish", "digits", file, "--version", "7", "--registry", reg)
    taken = edgecloud("policy", "publish", "digits", file, "--version", "7", "--registry", reg)
    assert [r.returncode for r in (first, second, named)] == [0, 0, 0], second.stderr
    assert "version 1;" in first.stdout and "version 2;" in second.stdout
    assert "version 7;" in named.stdout
    assert taken.returncode == 2 and "already exists" in taken.stderr
    registry = Registry(Path(reg))
    policies = registry.policy_versions("digits")
    assert sorted(policies, key=int) == ["1", "2", "7"]
    for envelope in policies.values():
        document = registry.blob_path(envelope.manifest.digest).read_bytes()
        assert parse_policy(document).version == envelope.manifest.version


def test_tokens_hash_and_generate(tmp_path: Path) -> None:
    """`tokens hash` prints the hash a tokens file may hold (from stdin or a file) and
    refuses a token too short; `tokens generate` prints a token and its hash."""
    from edgecloud.core.auth import Tokens

    token = "a-token-of-twenty-chars"
    hashed = subprocess.run([sys.executable, "-m", "edgecloud", "tokens", "hash"],
                            input=token + "\n", capture_output=True, text=True, timeout=60)
    assert hashed.returncode == 0, hashed.stderr
    (tmp_path / "t").write_text(token + "\n")
    assert edgecloud("tokens", "hash", "--token-file", str(tmp_path / "t")).stdout == \
        hashed.stdout
    assert Tokens([hashed.stdout.strip()]).principal(token) is not None
    short = subprocess.run([sys.executable, "-m", "edgecloud", "tokens", "hash"],
                           input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 16" in short.stderr
    made = edgecloud("tokens", "generate").stdout.split()
    new, digest = made[made.index("token:") + 1], made[made.index("hash:") + 1]
    assert Tokens([digest]).principal(new) is not None


@pytest.mark.e2e
def test_models_floor_publishes_a_signed_minimum_version(tmp_path: Path, digits_dir: Path):
    """`models floor` signs and publishes a task's minimum edge version, `models list`
    shows it, and a floor below the current one is refused with exit code 2."""
    reg = str(tmp_path / "registry")
    assert edgecloud("keys", "generate", "--out", str(tmp_path / "k")).returncode == 0
    key = str(tmp_path / "k" / "operator.key")
    for _ in range(2):
        published = edgecloud("models", "publish", "digits", str(digits_dir / "edge.onnx"),
                              "--target", "edge", "--key", key, "--promote", "--registry", reg)
        assert published.returncode == 0, published.stderr
    floor = edgecloud("models", "floor", "digits", "2", "--key", key, "--registry", reg)
    assert floor.returncode == 0, floor.stderr
    assert "floor of digits: version 2 (signed)" in floor.stdout
    listing = json.loads(edgecloud("models", "list", "--json", "--registry", reg).stdout)
    assert listing["digits"]["floor"]["version"] == "2" and listing["digits"]["floor"]["signed"]
    lower = edgecloud("models", "floor", "digits", "1", "--registry", reg)
    assert lower.returncode == 2 and "never goes down" in lower.stderr
