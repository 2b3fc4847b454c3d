"""The deployment files are valid for the code they deploy."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from envoy_bin import envoy_binary

from edgecloud.cli import build_parser
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.core import codec
from edgecloud.core.grpc_server import split_host_port
from edgecloud.core.settings import load_settings
from edgecloud.core.tensors import InferRequest
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
    mounts or reads variables from is created by the kustomization, and the ConfigMap holds
    the example settings."""
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    docs = _kustomized_resources()
    created = {(d["kind"], d["metadata"]["name"]) for d in docs}
    created |= {("Secret", g["name"]) for g in kustomization["secretGenerator"]}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    for container in pod["containers"]:
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ("Secret", ref["name"]) in created
    for volume in pod["volumes"]:
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
    files = [f for g in kustomization["secretGenerator"]
             for f in g.get("files", []) + g.get("envs", [])]
    assert files == ["secrets/operator.pub", "secrets/tokens.yaml", "secrets/s3.env"]
    readme = (DEPLOY.parent / "README.md").read_text()
    header = (DEPLOY / "kubernetes" / "kustomization.yaml").read_text().split("apiVersion")[0]
    for name in files:
        assert f"`{Path(name).name}`" in readme and Path(name).name in header, name


def test_gateways_share_an_s3_registry_and_scale_on_cpu() -> None:
    """The replicas share an s3:// registry with the endpoint and credentials from a Secret
    (no shared volume claim), a CPU HorizontalPodAutoscaler owns the replica count, and a
    disruption budget keeps one replica through node drains."""
    gateway = load_settings(GatewaySettings, DEPLOY / "config" / "gateway.yaml")
    assert gateway.registry is not None and gateway.registry.startswith("s3://")
    docs = _kustomized_resources()
    kinds = {d["kind"]: d for d in docs}
    assert "PersistentVolumeClaim" not in kinds
    deployment = kinds["Deployment"]
    assert "replicas" not in deployment["spec"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    from_secrets = {v["name"] for v in container["env"]
                    if "secretKeyRef" in v.get("valueFrom", {})}
    assert from_secrets == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_prometheus_is_pointed_at_the_http_port() -> None:
    """The gateway pods' Prometheus annotations name the port the gateway's settings serve
    HTTP (and so /metrics) on, which the container and the image declare; the agent's
    settings, which its systemd unit reads, serve HTTP on a port too; no deployment file
    names a separate metrics address any more."""
    gateway = load_settings(GatewaySettings, DEPLOY / "config" / "gateway.yaml")
    assert gateway.http_listen is not None
    _, http_port = split_host_port(gateway.http_listen)
    (deployment,) = [d for d in _kustomized_resources() if d["kind"] == "Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http_port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "http", "containerPort": http_port} in container["ports"]
    expose = next(line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
                  if line.startswith("EXPOSE "))
    assert str(http_port) in expose.split()[1:]

    unit = (DEPLOY / "systemd" / "edgecloud-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    args = build_parser().parse_args(exec_start.split("=", 1)[1].split()[1:])
    assert args.http_listen is None  # the settings file's address stands
    assert f"../config/agent.yaml {args.config}" in unit  # the file the unit installs
    agent = load_settings(AgentSettings, DEPLOY / "config" / "agent.yaml")
    assert agent.http_listen is not None
    split_host_port(agent.http_listen)

    for path in [*DEPLOY.rglob("*"), DEPLOY.parent / "README.md"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "metrics_listen" not in text and "metrics-listen" not in text, path


def test_manifests_and_dashboard_parse() -> None:
    """Kubernetes and Envoy YAML and the Grafana JSON are well formed."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "gateway.yaml").read_text()))
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
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


def _self_signed_pair(folder: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecloud.example.internal")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"tls.key": folder / "tls.key", "tls.crt": folder / "tls.crt"}


def _with_files_in(node: object, folder: Path) -> object:
    """``node`` with every ``/etc/envoy/tls/NAME`` path moved to ``folder/NAME``."""
    if isinstance(node, dict):
        return {k: _with_files_in(v, folder) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_files_in(v, folder) for v in node]
    if isinstance(node, str) and node.startswith("/etc/envoy/tls/"):
        return str(folder / node.removeprefix("/etc/envoy/tls/"))
    return node


def _envoy_validate(binary: Path, config: dict, path: Path) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([binary, "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_envoy_config_is_valid_for_the_real_envoy(tmp_path) -> None:
    """`envoy --mode validate` accepts deploy/envoy/envoy.yaml (its TLS files pointed at a
    generated pair) and refuses a broken copy, so the check is real."""
    binary = envoy_binary()
    _self_signed_pair(tmp_path)
    envoy = _with_files_in(yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text()),
                           tmp_path)
    result = _envoy_validate(binary, envoy, tmp_path / "envoy.yaml")
    assert result.returncode == 0 and " OK" in result.stdout + result.stderr, result.stderr
    envoy["static_resources"]["clusters"][0]["lb_policy"] = "NO_SUCH_POLICY"
    broken = _envoy_validate(binary, envoy, tmp_path / "broken.yaml")
    assert broken.returncode != 0 and "NO_SUCH_POLICY" in broken.stderr


def test_envoy_balances_grpc_streams_over_healthy_replicas() -> None:
    """Envoy speaks HTTP/2 to the replicas, checks them with grpc.health.v1, never times
    out a route (agent streams last), and serves TLS on every listener."""
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert all("grpc_health_check" in check for check in cluster["health_checks"])
    assert cluster["health_checks"]
    for listener in envoy["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            assert chain["transport_socket"]["name"] == "envoy.transport_sockets.tls"
            for f in chain["filters"]:
                for host in f["typed_config"]["route_config"]["virtual_hosts"]:
                    assert all(r["route"]["timeout"] == "0s" for r in host["routes"])


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend) of every query in the Grafana dashboard, rows included."""
    found: list[tuple[str, str, str]] = []

    def visit(panels: list[dict]) -> None:
        for panel in panels:
            found.extend((panel["title"], t["expr"], t.get("legendFormat", ""))
                         for t in panel.get("targets", []) if t.get("expr"))
            visit(panel.get("panels", []))

    visit(json.loads((DEPLOY / "grafana" / "edgecloud.json").read_text())["panels"])
    return found


def _promql_references(expr: str, legend: str = "") -> tuple[set[str], set[str]]:
    """Metric names and label names that ``expr`` (and its legend's ``{{label}}``) use."""
    import promql_parser

    names: set[str] = set()
    labels = set(re.findall(r"{{\s*(\w+)\s*}}", legend))

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__":
                    labels.add(matcher.name)
                elif matcher.op == promql_parser.MatchOp.Equal:
                    names.add(matcher.value)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif (isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None
              and node.modifier.matching is not None):
            labels.update(node.modifier.matching.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names, labels


def _exposed_series(text: str) -> dict[str, set[str]]:
    """Series name -> label names, from a /metrics page (a histogram's buckets carry
    ``le``)."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def _unknown_references(expr: str, legend: str, series: dict[str, set[str]]) -> list[str]:
    """What ``expr`` names that ``series`` lacks: metrics, and labels none of its metrics
    carry."""
    names, labels = _promql_references(expr, legend)
    missing = sorted(n for n in names if n not in series)
    carried = set().union(*(series.get(n, set()) for n in names))
    return missing + sorted(f"label {label}" for label in labels - carried)


async def _metrics_page(http_address: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{http_address}/metrics") as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.e2e
async def test_dashboard_queries_name_series_the_processes_serve(start_gateway, start_agent,
                                                                 channels, digits_test):
    """Every PromQL query of the Grafana dashboard parses, and each metric and label it
    names is served on /metrics by a running gateway or agent once traffic has gone
    through them: rows answered at the edge and in the cloud, and escalations that failed
    while the gateway was down."""
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    stub = channels(agent.address)
    x, _ = digits_test

    async def send(rows) -> str:
        request = codec.encode_infer_request(
            InferRequest(model_name="digits", inputs={"pixels": rows}))
        reply = codec.decode_infer_response(await stub.ModelInfer(request, timeout=5.0))
        return reply.parameters["route"]

    routes = [await send(x[i:i + 1]) for i in range(30)]
    assert {"edge", "cloud"} <= set(routes)
    series = _exposed_series(await _metrics_page(gateway.http_address))
    await gateway.stop(grace_s=0.1)
    assert "edge_fallback" in (await send(x[:30])).split(",")
    for name, labels in _exposed_series(await _metrics_page(agent.http_address)).items():
        series.setdefault(name, set()).update(labels)

    queries = _dashboard_queries()
    assert queries
    for title, expr, legend in queries:
        assert not _unknown_references(expr, legend, series), (title, expr)
    # The check catches a misspelt metric and a label the metric does not carry.
    assert _unknown_references("rate(edgecloud_agent_row_total[5m])", "", series) == [
        "edgecloud_agent_row_total"]
    assert _unknown_references("sum by (model) (edgecloud_agent_rows_total)", "{{kind}}",
                               series) == ["label kind", "label model"]
