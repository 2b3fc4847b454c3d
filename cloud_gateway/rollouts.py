"""Which versions an agent should run, and a replica serve: pure functions of the registry.

Every replica computes the same answer from the same snapshot, the agent's
labels and a stable hash of its id, so an agent gets the same assignment
whichever replica it lands on, and every replica serves the same cloud versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from edgecloud.cloud_gateway.registry import Envelope, FloorEnvelope, Rollout, Snapshot


@dataclass(frozen=True, slots=True)
class AgentAssignment:
    """Desired edge models and policies for one agent."""

    generation: int
    models: tuple[Envelope, ...]
    policies: tuple[Envelope, ...]
    floors: tuple[FloorEnvelope, ...] = ()
    """Every task's signed minimum edge version."""

    def key(self) -> tuple:
        """What identifies the assignment's content (generation aside)."""
        return (
            tuple((e.manifest.name, e.manifest.version, e.manifest.digest) for e in self.models),
            tuple((e.manifest.name, e.manifest.version, e.manifest.digest)
                  for e in self.policies),
            tuple((f.floor.name, f.floor.version) for f in self.floors),
        )

    def digests(self) -> set[str]:
        """The artifacts the agent may fetch: its models' and policies' digests."""
        return {e.manifest.digest for e in (*self.models, *self.policies)}


def bucket(name: str, agent_id: str) -> float:
    """A stable position of the agent in [0, 100) for this model's rollouts."""
    digest = hashlib.sha256(f"{name}\0{agent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every selector key must be among the labels with the same value."""
    return all(labels.get(key) == value for key, value in selector.items())


def desired_version(rollout: Rollout, agent_id: str, labels: Mapping[str, str]) -> str | None:
    """The version of ``rollout.name`` this agent should run."""
    if agent_id in rollout.pinned:
        return rollout.pinned[agent_id]
    if (
        rollout.candidate is not None
        and rollout.state in ("active", "paused")
        and selector_matches(rollout.selector, labels)
        and bucket(rollout.name, agent_id) < rollout.percent
    ):
        return rollout.candidate
    return rollout.stable


def desired_versions(snapshot: Snapshot, agent_id: str,
                     labels: Mapping[str, str]) -> tuple[str | None, ...]:
    """The edge version the agent should run of each model of ``snapshot.models`` (in its
    order); None for a model with no version it can run.

    Agents whose versions are the same get the same assignment (:func:`assignment_of`),
    so a replica computes each distinct assignment once per snapshot, not once per agent.
    """
    out: list[str | None] = []
    for name, versions in snapshot.models.items():
        rollout = snapshot.rollouts.get(name)
        if rollout is None:  # never rolled out: every agent runs the newest version
            version = next(reversed(versions), None)
        else:
            version = desired_version(rollout, agent_id, labels)
        out.append(version if version in versions else None)
    return tuple(out)


def assignment_of(snapshot: Snapshot, versions: tuple[str | None, ...]) -> AgentAssignment:
    """The assignment naming ``versions`` (as :func:`desired_versions` gives them), the
    latest policy and the floor of every task."""
    models = tuple(by_version[version] for by_version, version
                   in zip(snapshot.models.values(), versions, strict=True)
                   if version is not None)
    policies = tuple(next(reversed(v.values())) for v in snapshot.policies.values() if v)
    return AgentAssignment(snapshot.generation, models, policies,
                           tuple(snapshot.floors.values()))


def assignment_for(snapshot: Snapshot, agent_id: str,
                   labels: Mapping[str, str]) -> AgentAssignment:
    """Edge models (by rollout), the latest policy and the floor of every task, for one
    agent."""
    return assignment_of(snapshot, desired_versions(snapshot, agent_id, labels))


@dataclass(frozen=True, slots=True)
class CloudServing:
    """What every replica should serve for one cloud model."""

    stable: Envelope
    candidate: Envelope | None = None
    """Served for ``percent`` of the requests that name no version; None when none."""
    percent: float = 0.0


def cloud_versions(snapshot: Snapshot) -> dict[str, CloudServing]:
    """Per cloud model, the stable version and the candidate that shares the requests.

    A candidate gets requests only while its rollout is active or paused with a share
    above 0; a published version that was never promoted or rolled out serves nothing.
    A model without a rollout record (a registry older than cloud rollouts) serves its
    newest version.
    """
    out = {}
    for name, versions in snapshot.cloud_models.items():
        if not versions:
            continue
        rollout = snapshot.cloud_rollouts.get(name)
        if rollout is None or rollout.stable not in versions:
            out[name] = CloudServing(list(versions.values())[-1])
            continue
        candidate = None
        if (rollout.candidate in versions and rollout.state in ("active", "paused")
                and rollout.percent > 0):
            candidate = versions[rollout.candidate]
        out[name] = CloudServing(versions[rollout.stable], candidate,
                                 rollout.percent if candidate is not None else 0.0)
    return out
