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


def _kustomized_resources() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    return docs


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    """Every resource the kustomization applies is valid for Kubernetes (strict schemas)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for doc in _kustomized_resources():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_creates_everything_the_gateway_mounts() -> None:
    """Applying the folder is complete: every ConfigMap, Secret and claim the Deployment
    mounts is created by the kustomization, and the ConfigMap holds the example settings."""
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    docs = _kustomized_resources()
    created = {(d["kind"], d["metadata"]["name"]) for d in docs}
    created |= {("Secret", g["name"]) for g in kustomization["secretGenerator"]}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in created
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in created
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in created
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(config["data"]["gateway.yaml"]) == yaml.safe_load(
        (DEPLOY / "config" / "gateway.yaml").read_text())
    files = [f for g in kustomization["secretGenerator"] for f in g["files"]]
    assert files == ["secrets/operator.pub", "secrets/tokens.yaml"]


def test_manifests_and_dashboard_parse() -> None:
    """Kubernetes and Envoy YAML and the Grafana JSON are well formed."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "gateway.yaml").read_text()))
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PersistentVolumeClaim"}
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    assert envoy["static_resources"]["clusters"][0]["name"] == "edgecloud_gateway"
    dashboard = json.loads((DEPLOY / "grafana" / "edgecloud.json").read_text())
    assert len(dashboard["panels"]) >= 6


def test_the_example_deployment_carries_tokens_over_tls_only(tmp_path) -> None:
    """Envoy's listener serves TLS (HTTP/2), the example agent talks TLS to it with its
    token, and the example gateway, plaintext behind Envoy, says so: neither warns."""
    from structlog.testing import capture_logs

    from edgecloud.cloud_gateway.app import warn_if_tokens_travel_in_plaintext
    from edgecloud.edge_agent.app import warn_if_token_travels_in_plaintext

    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    for listener in envoy["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            tls = chain["transport_socket"]["typed_config"]
            assert tls["@type"].endswith("DownstreamTlsContext")
            assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    agent = load_settings(AgentSettings, DEPLOY / "config" / "agent.yaml")
    gateway = load_settings(GatewaySettings, DEPLOY / "config" / "gateway.yaml")
    assert agent.token_file is not None and agent.tls_ca is not None
    assert gateway.tokens_file is not None and gateway.behind_tls_proxy
    with capture_logs() as logs:
        assert not warn_if_token_travels_in_plaintext(agent)
        assert not warn_if_tokens_travel_in_plaintext(gateway)
    assert not any(e["event"] == "tokens_over_plaintext" for e in logs)
