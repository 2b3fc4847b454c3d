"""What the console shows, as plain data: the fleet, rollouts, models, policies, hard examples.

Each page is one blocking call (the HTTP layer runs it in a worker thread) that
reads the replica's registry snapshot and the stored reports, and returns
JSON-ready dicts. The one action, :meth:`FleetConsole.act`, is the registry's
``set_rollout``: the call behind the admin service's ``SetRollout`` and the
``models rollout|promote|rollback|pause|resume`` commands.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import structlog

from edgecloud.cloud_gateway.fleet import FleetHub
from edgecloud.cloud_gateway.fleet_view import fleet_rows
from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.cloud_gateway.registry import Envelope, Rollout, RolloutState
from edgecloud.cloud_gateway.review import ReviewQueue, ReviewRow
from edgecloud.cloud_gateway.rollouts import desired_version
from edgecloud.core.errors import InvalidInput, NotFound
from edgecloud.core.hard_examples import KeptExample
from edgecloud.core.signing import key_fingerprint
from edgecloud.router import Policy, PolicyError, parse_policy

log = structlog.get_logger("edgecloud.gateway.console")

CONSOLE_ACTIONS = ("promote", "rollback", "pause", "resume")
"""Rollout actions the console offers (starting a rollout stays with the command line)."""
RECENT_EXAMPLES = 24
"""Hard examples the examples page shows."""
MAX_DRAWN_VALUES = 4096
"""Largest input (values of one row) sent to the page to be drawn as an image."""
REVIEW_SHOWN = 20
"""Queued rows the review page shows (the oldest)."""
HISTORY_SHOWN = 8
"""Lines of a rollout's history the page shows (newest last)."""
_POLICY_CACHE = 256
"""Parsed policy versions kept (versions never change, so entries never go stale)."""


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def actions_for(rollout: Rollout) -> list[str]:
    """The console's actions that apply to ``rollout`` as it stands."""
    if rollout.candidate is None:
        return []
    actions = ["promote", "rollback"]
    if rollout.state == RolloutState.ACTIVE:
        actions.append("pause")
    elif rollout.state == RolloutState.PAUSED:
        actions.append("resume")
    return actions


def halt_reason(rollout: Rollout) -> str | None:
    """Why a halted rollout stopped (its last ``halted`` note), None when it has not."""
    if rollout.state != RolloutState.HALTED:
        return None
    notes = [line for line in rollout.history if " halted " in f" {line}"]
    return notes[-1].split(" ", 1)[-1] if notes else "halted"


def _running(status: Mapping[str, Any], task: str) -> str | None:
    for entry in status.get("tasks") or ():
        if entry.get("name") == task:
            return entry.get("model_version") or None
    return None


def edge_progress(rollout: Rollout, statuses: list[dict]) -> dict:
    """How far an edge rollout has got, from what the agents report.

    ``agents``: agents that report the task; ``assigned``: those the rollout gives
    the candidate (the same function that computes their assignment); ``running``:
    those of them that run it now; ``versions``: agents per running version.
    """
    agents = [s for s in statuses if any(t.get("name") == rollout.name
                                         for t in s.get("tasks") or ())]
    versions: dict[str, int] = {}
    for status in agents:
        version = _running(status, rollout.name) or "none"
        versions[version] = versions.get(version, 0) + 1
    assigned = running = 0
    if rollout.candidate is not None:
        for status in agents:
            agent_id = str(status.get("agent_id") or "")
            labels = status.get("labels") if isinstance(status.get("labels"), dict) else {}
            if desired_version(rollout, agent_id, labels) == rollout.candidate:
                assigned += 1
                running += _running(status, rollout.name) == rollout.candidate
    return {"agents": len(agents), "assigned": assigned, "running": running,
            "versions": dict(sorted(versions.items()))}


def signature_of(envelope: Envelope, key: str | None) -> dict:
    """How a stored version is signed: verified with the trust key (named), signed but not
    checked (the gateway has no trust key), or not signed."""
    if envelope.verified:
        return {"state": "verified", "key": key}
    if envelope.signature:
        return {"state": "unchecked", "key": None}
    return {"state": "none", "key": None}


def image_of(values: np.ndarray) -> dict | None:
    """One input row as an image: ``rows``, ``cols`` and the values row-major (grey
    levels; or, for a ``[3, H, W]`` or ``[H, W, 3]`` row, ``channels`` 3 and RGB values
    with ``scale`` 255 for uint8); None when the row is not a picture (not numeric, too
    large, not 2-D, square or RGB)."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiub" or array.size == 0 or array.size > MAX_DRAWN_VALUES:
        return None
    shape = [d for d in array.shape if d != 1]
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            return None
        shape = [side, side]
    if len(shape) == 3:  # a colour picture: [C, H, W] or [H, W, C] with 3 channels (RGB)
        array = array.reshape(shape)
        if shape[-1] == 3:
            pass
        elif shape[0] == 3:
            array = np.moveaxis(array, 0, -1)
        else:
            return None
        flat = array.astype(np.float64).ravel()
        return {"rows": array.shape[0], "cols": array.shape[1], "channels": array.shape[2],
                "scale": 255.0 if array.dtype == np.uint8 else None,
                "values": [v if math.isfinite(v) else None for v in flat.tolist()]}
    if len(shape) != 2:
        return None
    flat = array.astype(np.float64).ravel()
    return {"rows": shape[0], "cols": shape[1],
            "values": [v if math.isfinite(v) else None for v in flat.tolist()]}


def review_entry(row: ReviewRow) -> dict:
    """A queued row as the review page shows it: the input drawn as a picture when it is
    one, as a table of values otherwise; both models' top answers; the classes to pick."""
    kept, example = row.kept, row.kept.example
    inputs = []
    for tensor in example.inputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape), "image": None, "table": None}
        try:
            values = tensor.array()
        except InvalidInput:
            entry["problem"] = "the stored bytes do not fit the shape"
        else:
            entry["image"] = image_of(values)
            if entry["image"] is None and values.dtype.kind in "fiub":
                flat = values.astype(np.float64).ravel()[:MAX_DRAWN_VALUES]
                entry["table"] = [v if math.isfinite(v) else None for v in flat.tolist()]
        inputs.append(entry)
    return {
        "review_id": kept.record_id, "agent_id": kept.agent_id, "task": example.task,
        "at": example.at, "expires_at": row.expires_at, "answer_id": example.answer_id,
        "classes": row.classes,
        "edge": {"class": row.edge_class, "score": row.edge_score,
                 "model_version": example.model_version},
        "cloud": {"class": row.cloud_class, "score": row.cloud_score,
                  "model_version": example.cloud_model_version},
        "inputs": inputs,
    }


def _top_class(scores: tuple[float, ...] | None) -> int | None:
    if not scores:
        return None
    array = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(array).any():
        return None
    return int(np.nanargmax(np.where(np.isfinite(array), array, np.nan)))


def example_entry(kept: KeptExample) -> dict:
    """A stored hard example as the examples page shows it."""
    example = kept.example
    inputs = []
    for row in example.inputs:
        entry = {"name": row.name, "datatype": row.datatype, "shape": list(row.shape),
                 "image": None}
        try:
            entry["image"] = image_of(row.array())
        except InvalidInput:
            entry["problem"] = "the stored bytes do not fit the shape"
        inputs.append(entry)
    return {
        "record_id": kept.record_id, "agent_id": kept.agent_id, "task": example.task,
        "at": example.at, "route": example.route, "reason": example.reason,
        "confidence": example.confidence, "model_version": example.model_version,
        "policy_version": example.policy_version,
        "cloud_model_version": example.cloud_model_version,
        "edge_class": _top_class(example.edge_scores),
        "cloud_class": _top_class(example.cloud_scores),
        "inputs": inputs,
    }


def policy_entry(policy: Policy) -> dict:
    """The fields of a policy version the policies page shows, with its tuning curve and
    the curve's point nearest the policy's threshold."""
    curve = policy.tuning_curve
    drawn = None
    if curve is not None:
        chosen = min(bisect.bisect_left(curve.thresholds, policy.threshold),
                     len(curve.thresholds) - 1)
        drawn = {**curve.model_dump(mode="json"), "chosen": chosen}
    return {
        "score": str(policy.score), "threshold": policy.threshold,
        "temperature": policy.temperature, "class_thresholds": len(policy.class_thresholds),
        "scores_kind": str(policy.scores_kind), "shadow_rate": policy.shadow_rate,
        "escalation_budget": policy.budget.target_rate,
        "drift_reference": policy.calibration_histogram is not None,
        "provenance": policy.provenance.model_dump(mode="json"),
        "curve": drawn,
    }


class FleetConsole:
    """The console's pages and its one action, over one replica's fleet hub."""

    def __init__(self, hub: FleetHub, examples: HardExampleStore,
                 reviews: ReviewQueue | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._hub = hub
        self._examples = examples
        self._reviews = reviews or ReviewQueue(hub.registry.store)
        self._clock = clock
        self._policies: dict[str, dict | None] = {}
        self._examples_shown: dict[str, dict] = {}
        """Hard examples as the page shows them, by record id (a record never changes)."""
        self._lock = threading.Lock()

    @property
    def _key(self) -> str | None:
        trust = self._hub.registry.trust_key
        return key_fingerprint(trust) if trust is not None else None

    def agents(self) -> dict:
        """Every agent that reported, one row per agent and task (as ``fleet status``)."""
        now = self._clock()
        rows = fleet_rows(self._hub.registry.agent_statuses(), now)
        for row in rows:
            row["connected_here"] = self._hub.connected(str(row.get("agent_id") or ""))
        rows.sort(key=lambda r: (str(r.get("agent_id")), str(r.get("task"))))
        return finite({"now": now, "replica": self._hub.replica,
                       "agents": len({r["agent_id"] for r in rows}), "rows": rows})

    def rollouts(self) -> dict:
        """Every rollout record (edge and cloud) with its progress and what can be done."""
        snapshot = self._hub.snapshot
        statuses = self._hub.registry.agent_statuses()
        out = []
        for target, records in (("edge", snapshot.rollouts), ("cloud", snapshot.cloud_rollouts)):
            for _, rollout in sorted(records.items()):
                entry = rollout.model_dump(mode="json", exclude={"history"})
                entry.update(
                    history=rollout.history[-HISTORY_SHOWN:], actions=actions_for(rollout),
                    halt_reason=halt_reason(rollout),
                    progress=edge_progress(rollout, statuses) if target == "edge" else None)
                out.append(entry)
        return finite({"now": self._clock(), "generation": snapshot.generation,
                       "rollouts": out})

    def models(self) -> dict:
        """Every model version (edge and cloud) with its role and signature, and the floors."""
        snapshot = self._hub.snapshot
        key = self._key
        out = []
        for name in sorted({*snapshot.models, *snapshot.cloud_models}):
            versions = []
            for target, by_name, records in (("edge", snapshot.models, snapshot.rollouts),
                                             ("cloud", snapshot.cloud_models,
                                              snapshot.cloud_rollouts)):
                rollout = records.get(name)
                for version, envelope in reversed((by_name.get(name) or {}).items()):
                    m = envelope.manifest
                    role = ""
                    if rollout is not None and version == rollout.stable:
                        role = "stable"
                    elif rollout is not None and version == rollout.candidate:
                        role = f"candidate {rollout.percent:g}% ({rollout.state})"
                    versions.append({"version": version, "target": target, "role": role,
                                     "digest": m.digest, "size": m.size, "created": m.created,
                                     "signature": signature_of(envelope, key)})
            floor = snapshot.floors.get(name)
            out.append({"name": name, "versions": versions,
                        "floor": floor.floor.version if floor is not None else None})
        return {"now": self._clock(), "trust_key": key, "models": out}

    def _policy(self, envelope: Envelope) -> dict | None:
        digest = envelope.manifest.digest
        with self._lock:
            if digest in self._policies:
                return self._policies[digest]
        try:
            policy = parse_policy(self._hub.registry.blob_path(digest).read_bytes())
            entry = policy_entry(policy)
        except (OSError, NotFound, PolicyError) as exc:
            log.warning("console_policy_unreadable", policy=envelope.manifest.name,
                        version=envelope.manifest.version, error=str(exc)[:200])
            entry = None
        with self._lock:
            if len(self._policies) >= _POLICY_CACHE:
                self._policies.pop(next(iter(self._policies)))
            self._policies[digest] = entry
        return entry

    def policies(self) -> dict:
        """Every policy version, newest first, with its signature, settings and curve; the
        newest of each task is the one agents are assigned."""
        snapshot = self._hub.snapshot
        key = self._key
        out = []
        for name, versions in sorted(snapshot.policies.items()):
            entries = []
            for index, (version, envelope) in enumerate(reversed(versions.items())):
                entries.append({"version": version, "assigned": index == 0,
                                "created": envelope.manifest.created,
                                "signature": signature_of(envelope, key),
                                "policy": self._policy(envelope)})
            out.append({"name": name, "versions": entries})
        return finite({"now": self._clock(), "trust_key": key, "policies": out})

    def examples(self, limit: int = RECENT_EXAMPLES) -> dict:
        """The newest hard examples the fleet sent, newest first."""
        entries = []
        for kept in self._examples.recent(limit):
            entry = self._examples_shown.get(kept.record_id)
            if entry is None:
                entry = finite(example_entry(kept))
            entries.append(entry)
        with self._lock:  # only what the page shows now is kept
            self._examples_shown = {e["record_id"]: e for e in entries}
        return {"now": self._clock(), "examples": entries}

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue the review page shows."""
        return self._reviews

    def review(self, limit: int = REVIEW_SHOWN) -> dict:
        """The review queue, oldest first (at most ``limit`` rows), and how many wait."""
        rows, waiting = self._reviews.pending(limit=limit)
        return finite({"now": self._clock(), "waiting": waiting,
                       "max_age_s": self._reviews.max_age_s,
                       "rows": [review_entry(row) for row in rows]})

    def act(self, action: str, name: str, target: str) -> dict:
        """Apply ``action`` (one of :data:`CONSOLE_ACTIONS`) to the rollout of ``name``'s
        ``target`` model, as ``SetRollout`` does; returns the new record."""
        if action not in CONSOLE_ACTIONS:
            raise InvalidInput(f"the console can {', '.join(CONSOLE_ACTIONS)} a rollout, "
                               f"not {action[:40]!r}")
        rollout, generation = self._hub.registry.set_rollout(action, name, target=target)
        return {"rollout": rollout.model_dump(mode="json"), "generation": generation}
