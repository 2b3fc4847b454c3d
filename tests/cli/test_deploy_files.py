"""The deployment files are valid for the code they deploy."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from edgecloud.cli import build_parser
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.core.settings import load_settings
from edgecloud.edge_agent.settings import AgentSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_config_examples_load_as_settings() -> None:
    """The example YAML settings are accepted by the gateway and agent settings classes."""
    gateway = load_settings(GatewaySettings, DEPLOY / "config" / "gateway.yaml")
    assert gateway.listen == "0.0.0.0:8001" and gateway.batching.max_batch_size == 64
    agent = load_settings(AgentSettings, DEPLOY / "config" / "agent.yaml")
    assert agent.labels["site"] == "plant-1"


def test_commands_in_unit_and_image_parse() -> None:
    """The systemd unit's and the image's command lines are valid edgecloud commands."""
    unit = (DEPLOY / "systemd" / "edgecloud-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].split()[1:]
    assert build_parser().parse_args(argv).handler.__name__ == "_cmd_agent_run"
    docker = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(next(line for line in docker.splitlines()
                          if line.startswith("CMD "))[4:])
    assert build_parser().parse_args(cmd).handler.__name__ == "_cmd_gateway_serve"


def test_manifests_and_dashboard_parse() -> None:
    """Kubernetes and Envoy YAML and the Grafana JSON are well formed."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "gateway.yaml").read_text()))
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PersistentVolumeClaim"}
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    assert envoy["static_resources"]["clusters"][0]["name"] == "edgecloud_gateway"
    dashboard = json.loads((DEPLOY / "grafana" / "edgecloud.json").read_text())
    assert len(dashboard["panels"]) >= 6
