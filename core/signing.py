"""Operator keys and manifest signatures (Ed25519).

The operator signs each manifest with a private key that never leaves the
operator's machine; agents pin the public key and verify every manifest
before they fetch or load anything it names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgecloud.core.errors import InvalidInput

PRIVATE_KEY_FILE = "operator.key"
PUBLIC_KEY_FILE = "operator.pub"


def generate_keypair(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out_dir``; refuses to overwrite existing keys."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise InvalidInput(f"{path} already exists; move it away to make a new key pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM); InvalidInput names the file on any problem."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise InvalidInput(f"cannot read key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM); InvalidInput names the file on any problem."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise InvalidInput(f"cannot read key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Signature of ``data``."""
    return key.sign(data)


def verify(key: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid signature of ``data`` by ``key``."""
    if not signature:
        return False
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short name of a public key for people: ``ed25519:`` and the first 16 hex digits of
    the SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
