"""Signed manifest envelopes, immutable once written:
``models/<name>/<target>/<version>.json`` and ``policies/<name>/<version>.json``.

A version is created with a create-only write, so of two publishers racing for
it one wins and the other gets ALREADY_EXISTS. Envelopes never change, so each
is read once per process and kept (with the verdict on its signature): a
registry change costs one listing, not a read of every manifest.

With a trust key, an envelope whose signature does not verify is skipped
(logged once), never loaded, served or assigned.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass

import structlog

from edgecloud.cloud_gateway.storage import Conflict, ObjectStore
from edgecloud.core.artifacts import Manifest, parse_manifest, version_key
from edgecloud.core.errors import AlreadyExists, InvalidInput
from edgecloud.core.signing import verify

log = structlog.get_logger("edgecloud.gateway.registry")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A stored manifest with the exact signed bytes."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    verified: bool = False
    """True when the signature verifies with the registry's trust key."""


def envelope_bytes(manifest_bytes: bytes, signature: bytes) -> bytes:
    return json.dumps({
        "manifest": manifest_bytes.decode("utf-8"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }).encode()


def model_key(name: str, target: str, version: str) -> str:
    return f"models/{name}/{target}/{version}.json"


def policy_key(name: str, version: str) -> str:
    return f"policies/{name}/{version}.json"


class ManifestStore:
    """Envelopes in ``store``, read once each."""

    def __init__(self, store: ObjectStore, trust_key=None) -> None:
        self._store = store
        self.trust_key = trust_key
        self._cache: dict[str, Envelope | None] = {}
        self._lock = threading.Lock()

    def create(self, key: str, manifest_bytes: bytes, signature: bytes, what: str) -> None:
        """Write a new envelope; AlreadyExists when the version is taken."""
        try:
            self._store.put(key, envelope_bytes(manifest_bytes, signature), if_none_match=True)
        except Conflict:
            raise AlreadyExists(f"{what} already exists; versions are immutable") from None

    def exists(self, key: str) -> bool:
        return self._store.exists(key)

    def read(self, key: str) -> Envelope | None:
        """The envelope (None when absent, damaged or not trusted)."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        stored = self._store.get(key)
        if stored is None:
            return None  # absent now, maybe written later: not cached
        envelope = self._parse(key, stored.data)
        with self._lock:
            self._cache[key] = envelope
        return envelope

    def _parse(self, key: str, data: bytes) -> Envelope | None:
        try:
            document = json.loads(data)
            manifest_bytes = document["manifest"].encode("utf-8")
            signature = base64.b64decode(document["signature"])
            manifest = parse_manifest(manifest_bytes)
        except (KeyError, TypeError, ValueError, InvalidInput):
            log.warning("envelope_damaged", key=key)
            return None
        verified = bool(signature) and self.trust_key is not None and verify(
            self.trust_key, manifest_bytes, signature)
        if self.trust_key is not None and not verified:
            log.warning("envelope_not_trusted", key=key, name=manifest.name,
                        version=manifest.version,
                        why="unsigned" if not signature else "signature does not verify")
            return None
        return Envelope(manifest, manifest_bytes, signature, verified)

    def versions(self, prefix: str) -> dict[str, Envelope]:
        """Version -> envelope under ``prefix`` (``models/NAME/TARGET/`` or
        ``policies/NAME/``), oldest first."""
        return self.read_all(k for k in self._store.list(prefix) if k.endswith(".json")
                             and k.count("/") == prefix.count("/"))

    def read_all(self, keys) -> dict[str, Envelope]:
        out = {}
        for key in keys:
            envelope = self.read(key)
            if envelope is not None:
                out[envelope.manifest.version] = envelope
        return dict(sorted(out.items(), key=lambda kv: version_key(kv[0])))

    def list(self, prefix: str) -> list[str]:
        return self._store.list(prefix)
