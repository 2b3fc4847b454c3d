"""What each agent last reported (``agents/<id>.json``) and what each gateway replica
serves (``replicas/<replica>.json``): mutable, last writer wins (each has one writer)."""

from __future__ import annotations

import json

from edgecloud.cloud_gateway.registry.rollout_state import AGENT_ID_RE
from edgecloud.cloud_gateway.storage import ObjectStore
from edgecloud.core.errors import InvalidInput


def _checked(what: str, name: str) -> str:
    if not AGENT_ID_RE.fullmatch(name or ""):
        raise InvalidInput(f"{what} {name!r} is not valid")
    return name


class StatusStore:
    """Last reports of one kind (``agents`` or ``replicas``), one object each."""

    def __init__(self, store: ObjectStore, folder: str, what: str) -> None:
        self._store = store
        self._folder = folder
        self._what = what

    def write(self, name: str, status: dict) -> None:
        key = f"{self._folder}/{_checked(self._what, name)}.json"
        self._store.put(key, json.dumps(status, sort_keys=True).encode())

    def read(self, name: str) -> dict | None:
        stored = self._store.get(f"{self._folder}/{_checked(self._what, name)}.json")
        if stored is None:
            return None
        try:
            return json.loads(stored.data)
        except ValueError:
            return None

    def remove(self, name: str) -> None:
        if AGENT_ID_RE.fullmatch(name or ""):
            self._store.delete(f"{self._folder}/{name}.json")

    def all(self) -> list[dict]:
        out = []
        for key in self._store.list(self._folder + "/"):
            if not key.endswith(".json") or key.count("/") != 1:
                continue
            stored = self._store.get(key)
            if stored is None:
                continue
            try:
                out.append(json.loads(stored.data))
            except ValueError:
                continue
        return out
