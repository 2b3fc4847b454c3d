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
        (["models", "list", "--registry", "s3://bucket/prefix"], "not supported yet"),
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
