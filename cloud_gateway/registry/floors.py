"""Signed version floors: ``floors/<name>.json``, a task's minimum edge version.

A floor only rises. It is replaced by compare-and-swap (created with a
create-only write, later raised with a write that succeeds only if nobody
changed it since it was read), so of two operators raising it at once one
wins and the other re-checks against the winner's floor.

With a trust key, a floor whose signature does not verify is skipped (logged),
as manifest envelopes are: agents would refuse it anyway.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import structlog

from edgecloud.cloud_gateway.registry.manifests import envelope_bytes
from edgecloud.cloud_gateway.storage import ObjectStore
from edgecloud.core.artifacts import Floor, parse_floor
from edgecloud.core.errors import InvalidInput
from edgecloud.core.signing import verify

log = structlog.get_logger("edgecloud.gateway.registry")


@dataclass(frozen=True, slots=True)
class FloorEnvelope:
    """A stored floor with the exact signed bytes."""

    floor: Floor
    document: bytes
    signature: bytes


def floor_key(name: str) -> str:
    return f"floors/{name}.json"


class FloorStore:
    """Floors in ``store``, one object per task."""

    def __init__(self, store: ObjectStore, trust_key=None) -> None:
        self._store = store
        self.trust_key = trust_key

    def read(self, name: str) -> tuple[FloorEnvelope | None, str | None]:
        """The task's floor (None when absent, damaged or not trusted) and the stored
        object's tag (None when there is no object), for :meth:`replace`."""
        key = floor_key(name)
        stored = self._store.get(key)
        if stored is None:
            return None, None
        return self._parse(key, stored.data), stored.etag

    def _parse(self, key: str, data: bytes) -> FloorEnvelope | None:
        try:
            document = json.loads(data)
            floor_bytes = document["manifest"].encode("utf-8")
            signature = base64.b64decode(document["signature"])
            envelope = FloorEnvelope(parse_floor(floor_bytes), floor_bytes, signature)
        except (KeyError, TypeError, ValueError, InvalidInput):
            log.warning("floor_damaged", key=key)
            return None
        if self.trust_key is not None and not (
                signature and verify(self.trust_key, floor_bytes, signature)):
            log.warning("floor_not_trusted", key=key, name=envelope.floor.name,
                        version=envelope.floor.version)
            return None
        return envelope

    def replace(self, name: str, document: bytes, signature: bytes,
                etag: str | None) -> None:
        """Write the floor only if the object is still the one read with tag ``etag``
        (None: only if there is none); storage ``Conflict`` otherwise."""
        self._store.put(floor_key(name), envelope_bytes(document, signature),
                        if_none_match=etag is None, if_match=etag)

    def all(self) -> dict[str, FloorEnvelope]:
        """Every task's floor, by task name."""
        out = {}
        for key in self._store.list("floors/"):
            if not key.endswith(".json") or key.count("/") != 1:
                continue
            stored = self._store.get(key)
            envelope = self._parse(key, stored.data) if stored is not None else None
            if envelope is not None and key == floor_key(envelope.floor.name):
                out[envelope.floor.name] = envelope
        return out


__all__ = ["FloorEnvelope", "FloorStore", "floor_key"]
