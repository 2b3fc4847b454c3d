"""Mutual TLS between agents, operators and the gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleet_helpers import publish_model, publish_policy, running_version, wait_until

from edgecloud.core.tensors import InferRequest
from edgecloud.core.tls import channel_credentials
from edgecloud.operations import GatewayOperator
from edgecloud.protos.inference import grpc_predict_v2_pb2 as pb
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, key, cert) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("edgecloud test CA"))
          .issuer_name(_name("edgecloud test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common: str, sans: list) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    out = {}
    out["ca"] = tmp_path / "ca.pem"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["server_cert"], out["server_key"] = _write(tmp_path, "server", *leaf(
        "gateway", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    out["client_cert"], out["client_key"] = _write(tmp_path, "agent", *leaf("agent-0", []))
    return out


@pytest.mark.e2e
async def test_mutual_tls_fleet_and_escalation(start_gateway, start_agent, tmp_path, pki,
                                               digits_dir, digits_test):
    """With mTLS the agent receives models and escalates; plaintext clients and TLS clients
    without a certificate are refused; the operator tool works with its certificate."""
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, registry_poll_ms=50,
                                  tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                                  tls_client_ca=pki["ca"])
    agent = await start_agent(gateway.address, models={}, policies=[], agent_id="agent-0",
                              tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                              tls_key=pki["client_key"], status_interval_s=0.2)
    await asyncio.to_thread(publish_model, registry, "digits", digits_dir / "edge.onnx",
                            "edge", version="1")
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml")
    await wait_until(lambda: running_version(agent) == "1", what="model over mTLS")
    x, _ = digits_test
    answer = await agent.service.answer(InferRequest(
        model_name="digits", inputs={"pixels": x[:4]}, parameters={"route": "cloud"}), 5.0)
    assert {r.value for r in answer.routing.routes()} == {"cloud"}

    async with grpc.aio.insecure_channel(gateway.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(plain).ServerLive(pb.ServerLiveRequest(),
                                                                     timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = channel_credentials(pki["ca"])
    async with grpc.aio.secure_channel(gateway.address, no_cert) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.GRPCInferenceServiceStub(anonymous).ServerLive(pb.ServerLiveRequest(),
                                                                         timeout=3)
    operator = GatewayOperator(gateway.address, credentials=channel_credentials(
        pki["ca"], pki["client_cert"], pki["client_key"]))
    try:
        statuses = await asyncio.to_thread(operator.fleet_status)
    finally:
        operator.close()
    assert [s["agent_id"] for s in statuses] == ["agent-0"]
