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
from structlog.testing import capture_logs

from edgecloud.core.auth import call_metadata
from edgecloud.core.tensors import InferRequest
from edgecloud.core.tls import channel_credentials
from edgecloud.operations import GatewayOperator
from edgecloud.protos.fleet.v1 import fleet_pb2, fleet_pb2_grpc
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


class Pki:
    """A test CA that issues server and client certificates into a folder."""

    def __init__(self, folder: Path, name: str = "edgecloud test CA") -> None:
        self.folder = folder
        self.now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(_name(name))
                     .issuer_name(_name(name)).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(self.now)
                     .not_valid_after(self.now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca = folder / f"{name.replace(' ', '-')}.pem"
        self.ca.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, common: str, sans: list, *,
              expired: bool = False) -> tuple[Path, Path]:
        """A leaf certificate and its key (paths); ``expired`` ended an hour ago."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = self.now - dt.timedelta(days=2) if expired else self.now
        end = self.now - dt.timedelta(hours=1) if expired else self.now + dt.timedelta(days=1)
        builder = (x509.CertificateBuilder().subject_name(_name(common))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start)
                   .not_valid_after(end))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.folder, stem, key, builder.sign(self.key, hashes.SHA256()))

    def client(self, stem: str, identity: str | None, **kw) -> tuple[Path, Path]:
        """A client certificate naming ``identity`` (edgecloud://ROLE/NAME) or nothing."""
        sans = [x509.UniformResourceIdentifier(identity)] if identity else []
        return self.issue(stem, stem, sans, **kw)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, and client certificates: the
    agent agent-0's, an operator's and a viewer's (identities in URI SANs)."""
    ca = Pki(tmp_path)
    out = {"ca": ca.ca}
    out["server_cert"], out["server_key"] = ca.issue(
        "server", "gateway",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out["client_cert"], out["client_key"] = ca.client("agent", "edgecloud://agent/agent-0")
    out["operator_cert"], out["operator_key"] = ca.client("alice", "edgecloud://operator/alice")
    out["viewer_cert"], out["viewer_key"] = ca.client("bob", "edgecloud://viewer/bob")
    out["plain_cert"], out["plain_key"] = ca.client("agent-0", None)  # CN only
    out["expired_cert"], out["expired_key"] = ca.client("old", "edgecloud://agent/agent-0",
                                                        expired=True)
    stranger = Pki(tmp_path, "stranger CA")
    out["stranger_cert"], out["stranger_key"] = stranger.client("x",
                                                                "edgecloud://operator/alice")
    return out


def _credentials(pki: dict[str, Path], who: str | None) -> grpc.ChannelCredentials:
    if who is None:
        return channel_credentials(pki["ca"])
    return channel_credentials(pki["ca"], pki[f"{who}_cert"], pki[f"{who}_key"])


async def _mtls_gateway(start_gateway, tmp_path, pki, **overrides):
    return await start_gateway(registry=tmp_path / "registry", registry_poll_ms=50,
                               tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                               tls_client_ca=pki["ca"], **overrides)


@pytest.mark.e2e
async def test_mutual_tls_fleet_and_escalation(start_gateway, start_agent, tmp_path, pki,
                                               digits_dir, digits_test):
    """With mTLS the agent receives models and escalates under its certificate's identity;
    plaintext clients and TLS clients without a certificate are refused; the operator tool
    works with an operator certificate."""
    registry = tmp_path / "registry"
    gateway = await _mtls_gateway(start_gateway, tmp_path, pki)
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
    async with grpc.aio.secure_channel(gateway.address, _credentials(pki, None)) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.GRPCInferenceServiceStub(anonymous).ServerLive(pb.ServerLiveRequest(),
                                                                         timeout=3)
    operator = GatewayOperator(gateway.address, credentials=_credentials(pki, "operator"))
    try:
        statuses = await asyncio.to_thread(operator.fleet_status)
    finally:
        operator.close()
    assert [s["agent_id"] for s in statuses] == ["agent-0"]


@pytest.mark.e2e
async def test_certificate_identity_scopes_each_caller(start_gateway, tmp_path, pki) -> None:
    """An agent certificate cannot act as another agent or as an operator, a viewer
    certificate only reads, a certificate naming no identity is unauthenticated; each
    refusal names the problem and is logged once."""
    gateway = await _mtls_gateway(start_gateway, tmp_path, pki)

    async def call(who, rpc: str, request):
        async with grpc.aio.secure_channel(gateway.address, _credentials(pki, who)) as channel:
            stubs = {"FleetStatus": fleet_pb2_grpc.AdminServiceStub(channel).FleetStatus,
                     "SetRollout": fleet_pb2_grpc.AdminServiceStub(channel).SetRollout,
                     "ReportStatus": fleet_pb2_grpc.FleetServiceStub(channel).ReportStatus}
            return await stubs[rpc](request, timeout=5)

    status = fleet_pb2.FleetStatusRequest()
    rollout = fleet_pb2.RolloutRequest(action="promote", name="digits")
    cases = [
        ("client", "FleetStatus", status, grpc.StatusCode.PERMISSION_DENIED,
         "the agent role may not call"),
        ("client", "ReportStatus", fleet_pb2.AgentStatus(agent_id="agent-1"),
         grpc.StatusCode.PERMISSION_DENIED, "only act as itself"),
        ("viewer", "SetRollout", rollout, grpc.StatusCode.PERMISSION_DENIED,
         "the viewer role may not call"),
        ("plain", "FleetStatus", status, grpc.StatusCode.UNAUTHENTICATED,
         "names no edgecloud identity"),
    ]
    with capture_logs() as logs:
        for who, rpc, request, code, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(who, rpc, request)
            assert err.value.code() == code, who
            assert message in err.value.details()
    refusals = [e for e in logs if e["event"] in ("call_refused", "rpc_refused")]
    assert len(refusals) == len(cases)
    assert (await call("viewer", "FleetStatus", status)).json == "[]"
    assert (await call("client", "ReportStatus", fleet_pb2.AgentStatus(agent_id="agent-0")))


@pytest.mark.e2e
@pytest.mark.parametrize("who", ["expired", "stranger"])
async def test_expired_or_unknown_certificates_are_refused_at_the_handshake(
        start_gateway, tmp_path, pki, who) -> None:
    """A client certificate that has expired, or that a CA the gateway does not trust
    signed, never gets a call through (the TLS handshake fails: UNAVAILABLE); the gateway
    keeps serving good clients."""
    gateway = await _mtls_gateway(start_gateway, tmp_path, pki)
    async with grpc.aio.secure_channel(gateway.address, _credentials(pki, who)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet_pb2_grpc.AdminServiceStub(channel).FleetStatus(
                fleet_pb2.FleetStatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.secure_channel(gateway.address,
                                       _credentials(pki, "operator")) as channel:
        await fleet_pb2_grpc.AdminServiceStub(channel).FleetStatus(
            fleet_pb2.FleetStatusRequest(), timeout=5)


@pytest.mark.e2e
async def test_certificate_and_token_must_name_the_same_caller(start_gateway, tmp_path,
                                                               pki) -> None:
    """With tokens and mTLS together, an agent certificate carrying an operator token is
    refused, and an operator token on a certificate without an identity works."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("operators: [op-token-0123456789]\n")
    gateway = await _mtls_gateway(start_gateway, tmp_path, pki, tokens_file=tokens)
    for who, code in (("client", grpc.StatusCode.PERMISSION_DENIED), ("plain", None)):
        async with grpc.aio.secure_channel(gateway.address, _credentials(pki, who)) as channel:
            call = fleet_pb2_grpc.AdminServiceStub(channel).FleetStatus(
                fleet_pb2.FleetStatusRequest(), timeout=5,
                metadata=call_metadata("op-token-0123456789"))
            if code is None:
                await call
                continue
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code
            assert "names the agent agent-0 but the token belongs to the operator" in \
                err.value.details()
