"""Typed admin replies: the one converter between the registry's rollout records and
model listings and their ``fleet.v1`` messages, both ways.

The gateway's admin servicer turns domain data into messages; the operator's
client (``edgecloud.operations``) turns them back into the same data a
registry read directly gives, so every command shows the same thing whichever
target it talks to.
"""

from __future__ import annotations

from typing import Any

from edgecloud.cloud_gateway.registry import Rollout, RolloutState
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb

_STATE_PREFIX = "ROLLOUT_STATE_"
_SIGNATURE_PREFIX = "SIGNATURE_STATE_"


def rollout_message(rollout: Rollout) -> pb.Rollout:
    """Domain rollout record -> wire message."""
    message = pb.Rollout(
        name=rollout.name, target=rollout.target, percent=rollout.percent,
        selector=rollout.selector, max_failures=rollout.max_failures,
        state=pb.RolloutState.Value(_STATE_PREFIX + rollout.state.name),
        pinned=rollout.pinned, failures=rollout.failures, history=rollout.history,
        updated=rollout.updated,
    )
    if rollout.stable is not None:
        message.stable = rollout.stable
    if rollout.candidate is not None:
        message.candidate = rollout.candidate
    return message


def _state(value: int) -> RolloutState:
    """A wire state as the domain's; one this side does not know reads as ``none``."""
    name = (pb.RolloutState.Name(value).removeprefix(_STATE_PREFIX)
            if value in pb.RolloutState.values() else "")
    return RolloutState.__members__.get(name, RolloutState.NONE)


def rollout_from_message(message: pb.Rollout) -> Rollout:
    """Wire message -> domain rollout record."""
    fields: dict[str, Any] = {
        "name": message.name, "target": message.target or "edge",
        "stable": message.stable if message.HasField("stable") else None,
        "candidate": message.candidate if message.HasField("candidate") else None,
        "percent": message.percent, "selector": dict(message.selector),
        "state": _state(message.state), "pinned": dict(message.pinned),
        "failures": dict(message.failures), "history": list(message.history),
        "updated": message.updated,
    }
    if message.max_failures:
        fields["max_failures"] = message.max_failures
    return Rollout(**fields)


def _optional_rollout(data: dict | None) -> pb.Rollout | None:
    return rollout_message(Rollout.model_validate(data)) if data else None


def model_info_message(name: str, info: dict) -> pb.ModelInfo:
    """One entry of :meth:`Registry.describe` -> wire message."""
    floor = info.get("floor")
    served = info.get("served_by") or {}
    return pb.ModelInfo(
        name=name,
        versions=[pb.ModelVersion(
            version=v["version"], target=v["target"], digest=v["digest"], size=v["size"],
            created=v["created"], signed_by=v.get("signed_by") or "",
            signature=pb.SignatureState.Value(_SIGNATURE_PREFIX + v["signature"].upper()))
            for v in info.get("versions") or ()],
        rollout=_optional_rollout(info.get("rollout")),
        cloud_rollout=_optional_rollout(info.get("cloud_rollout")),
        floor=(pb.ModelFloor(version=floor["version"], created=floor["created"],
                             signed=floor["signed"]) if floor else None),
        served_by=[_serving_message(replica, serving)
                   for replica, serving in sorted(served.items())],
    )


def _serving_message(replica: str, serving: dict) -> pb.ReplicaServing:
    message = pb.ReplicaServing(replica=replica, version=str(serving.get("version") or ""),
                                percent=float(serving.get("percent") or 0.0),
                                updated=float(serving.get("updated") or 0.0))
    if serving.get("candidate") is not None:
        message.candidate = serving["candidate"]
    return message


def model_listing_reply(described: dict[str, dict]) -> pb.ListModelsReply:
    """:meth:`Registry.describe` -> wire reply."""
    return pb.ListModelsReply(models=[model_info_message(name, info)
                                      for name, info in described.items()])


def _signature_name(state: int) -> str:
    if state not in pb.SignatureState.values():
        return "none"
    name = pb.SignatureState.Name(state).removeprefix(_SIGNATURE_PREFIX).lower()
    return "none" if name == "unspecified" else name


def model_info_from_message(message: pb.ModelInfo) -> dict:
    """Wire message -> one entry in the shape :meth:`Registry.describe` gives."""
    floor = message.floor if message.HasField("floor") else None
    return {
        "floor": ({"version": floor.version, "created": floor.created, "signed": floor.signed}
                  if floor is not None else None),
        "versions": [{"version": v.version, "target": v.target, "digest": v.digest,
                      "size": v.size, "created": v.created,
                      "signed": v.signature == pb.SIGNATURE_STATE_VERIFIED,
                      "signed_by": v.signed_by,
                      "signature": _signature_name(v.signature)}
                     for v in message.versions],
        "rollout": (rollout_from_message(message.rollout).model_dump(mode="json")
                    if message.HasField("rollout") else None),
        "cloud_rollout": (rollout_from_message(message.cloud_rollout).model_dump(mode="json")
                          if message.HasField("cloud_rollout") else None),
        "served_by": {s.replica: {"version": s.version,
                                  "candidate": s.candidate if s.HasField("candidate") else None,
                                  "percent": s.percent, "updated": s.updated}
                      for s in message.served_by},
    }


def model_listing_from_reply(reply: pb.ListModelsReply) -> dict[str, dict]:
    """Wire reply -> the data :meth:`Registry.describe` gives (model name -> entry)."""
    return {info.name: model_info_from_message(info) for info in reply.models}
