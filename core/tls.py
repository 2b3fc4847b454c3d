"""TLS and mutual TLS for the agent <-> gateway links (optional).

The gateway presents a certificate and, given a client CA, requires and
checks client certificates; agents and operator tools verify the gateway
against a CA and present their own certificate when one is configured.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from edgecloud.core.errors import InvalidInput
from edgecloud.core.targets import ROUND_ROBIN_SERVICE_CONFIG


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise InvalidInput(f"{what} {path} is not PEM")
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """Credentials for a server; with ``client_ca`` every client must show a cert it signed."""
    ca = _read(client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def channel_credentials(ca: Path | None, cert: Path | None = None,
                        key: Path | None = None) -> grpc.ChannelCredentials:
    """Credentials for a client: trust ``ca`` (system roots when None), show cert/key if given."""
    if (cert is None) != (key is None):
        raise InvalidInput("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "TLS CA"),
        private_key=_read(key, "TLS key"),
        certificate_chain=_read(cert, "TLS certificate"),
    )


def open_channel(target: str, credentials: grpc.ChannelCredentials | None, options: list,
                 aio: bool = True):
    """A secure channel when credentials are given, else an insecure one.

    Calls spread round robin over every address ``target`` resolves to (see
    :mod:`core.targets`); a single address is one connection.
    """
    options = [*options, ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG)]
    if aio:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)
