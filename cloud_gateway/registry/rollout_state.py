"""A model's rollout record and the state machine operators and agents drive it through.

States (``RolloutState``) and what moves between them::

    none ──start──▶ active ◀──resume── paused
      ▲               │ ──pause──▶ paused
      │               ├──promote──▶ promoted ──start──▶ active
      │               ├──rollback─▶ rolled_back ──start──▶ active
      │               └──failures ≥ max_failures──▶ halted ──start──▶ active
    publish of a first version (or ``promote``d publish): stable, state none/promoted
    publish of a cloud version: candidate at 0%, active

Every transition is a pure function of the record (:func:`apply`), so the
registry can retry it on a fresh copy when a compare-and-swap loses.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from edgecloud.core.artifacts import Floor, now_iso, version_key
from edgecloud.core.errors import FailedPrecondition, InvalidInput, NotFound

AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
HISTORY = 50
"""Entries of history kept per record (newest last)."""


class RolloutState(enum.StrEnum):
    """Where a rollout stands."""

    NONE = "none"
    ACTIVE = "active"
    PAUSED = "paused"
    HALTED = "halted"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


CANDIDATE_LIVE = frozenset({RolloutState.ACTIVE, RolloutState.PAUSED})
"""States in which the candidate is assigned (paused: to those that have it, no more)."""


class RolloutAction(enum.StrEnum):
    """What an operator can do to a rollout."""

    START = "start"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    PIN = "pin"
    UNPIN = "unpin"

    @classmethod
    def parse(cls, text: str) -> RolloutAction:
        try:
            return cls(text)
        except ValueError:
            raise InvalidInput(f"unknown rollout action {text!r} (one of: "
                               f"{', '.join(a.value for a in cls)})") from None


class Rollout(BaseModel):
    """Which version of a model each agent should run."""

    model_config = ConfigDict(extra="forbid")

    name: str
    target: str = Field("edge", pattern="^(edge|cloud)$")
    """``edge``: versions agents run. ``cloud``: versions the gateway replicas serve."""
    stable: str | None = None
    """Version every agent runs (edge), or every replica serves (cloud), unless the rollout
    picks the candidate."""
    candidate: str | None = None
    """Version being rolled out, if any. A new cloud version is the candidate (at 0%) until
    it is promoted."""
    percent: float = Field(0.0, ge=0.0, le=100.0)
    """Edge: share of matching agents (by a stable hash of their id) that get the
    candidate. Cloud: share of requests the replicas answer with the candidate."""
    selector: dict[str, str] = Field(default_factory=dict)
    """Labels an agent must have to be considered for the candidate."""
    max_failures: int = Field(3, ge=1)
    """Failed swaps to the candidate that halt the rollout."""
    state: RolloutState = RolloutState.NONE
    pinned: dict[str, str] = Field(default_factory=dict)
    """Agent id -> version, overriding everything else."""
    failures: dict[str, str] = Field(default_factory=dict)
    """Agent id (cloud: replica) -> why its swap to the candidate failed."""
    history: list[str] = Field(default_factory=list)
    """What happened, newest last."""
    updated: str = ""

    def note(self, event: str) -> None:
        """Add a stamped line to the history (the oldest drop off)."""
        self.history = [*self.history, f"{now_iso()} {event}"][-HISTORY:]


@dataclass(frozen=True, slots=True)
class Request:
    """An operator action with its arguments."""

    action: RolloutAction
    version: str = ""
    percent: float = 0.0
    selector: dict[str, str] | None = None
    max_failures: int = 0
    agent_id: str = ""


def _need_candidate(r: Rollout, what: str) -> None:
    if r.candidate is None:
        raise FailedPrecondition(f"model {r.name!r} has no {what}")


def _need_version(r: Rollout, version: str, versions: Collection[str]) -> None:
    if version not in versions:
        raise NotFound(f"model {r.name!r} has no version {version!r} "
                       f"(versions: {', '.join(versions)})")


def _start(r: Rollout, q: Request, versions: Collection[str]) -> None:
    _need_version(r, q.version, versions)
    if not 0.0 <= q.percent <= 100.0:
        raise InvalidInput(f"percent must be within [0, 100] (got {q.percent})")
    if q.version == r.stable:
        raise FailedPrecondition(f"version {q.version} is already stable")
    if r.candidate != q.version:
        r.failures = {}
    r.candidate, r.percent, r.selector = q.version, q.percent, dict(q.selector or {})
    if q.max_failures:
        r.max_failures = q.max_failures
    r.state = RolloutState.ACTIVE
    r.note(f"rollout {q.version} to {q.percent:g}%")


def _promote(r: Rollout, q: Request, versions: Collection[str]) -> None:
    _need_candidate(r, "candidate to promote")
    r.note(f"promote {r.candidate}")
    r.stable, r.candidate = r.candidate, None
    r.percent, r.failures, r.state = 0.0, {}, RolloutState.PROMOTED


def _rollback(r: Rollout, q: Request, versions: Collection[str]) -> None:
    _need_candidate(r, "candidate to roll back")
    r.note(f"rollback {r.candidate}")
    r.candidate, r.percent, r.state = None, 0.0, RolloutState.ROLLED_BACK


def _pause(r: Rollout, q: Request, versions: Collection[str]) -> None:
    _need_candidate(r, "rollout to pause")
    r.state = RolloutState.PAUSED
    r.note("pause")


def _resume(r: Rollout, q: Request, versions: Collection[str]) -> None:
    _need_candidate(r, "rollout to resume")
    r.state = RolloutState.ACTIVE
    r.note("resume")


def _pin(r: Rollout, q: Request, versions: Collection[str]) -> None:
    if q.version not in versions:
        raise NotFound(f"model {r.name!r} has no version {q.version!r}")
    if not AGENT_ID_RE.fullmatch(q.agent_id or ""):
        raise InvalidInput("pin needs a valid agent id")
    r.pinned[q.agent_id] = q.version
    r.note(f"pin {q.agent_id} to {q.version}")


def _unpin(r: Rollout, q: Request, versions: Collection[str]) -> None:
    r.pinned.pop(q.agent_id, None)
    r.note(f"unpin {q.agent_id}")


_TRANSITIONS: dict[RolloutAction, Callable[[Rollout, Request, Collection[str]], None]] = {
    RolloutAction.START: _start,
    RolloutAction.PROMOTE: _promote,
    RolloutAction.ROLLBACK: _rollback,
    RolloutAction.PAUSE: _pause,
    RolloutAction.RESUME: _resume,
    RolloutAction.PIN: _pin,
    RolloutAction.UNPIN: _unpin,
}
EDGE_ONLY = frozenset({RolloutAction.PIN, RolloutAction.UNPIN})
ASSIGNING = {RolloutAction.START: "rollout", RolloutAction.PIN: "pin"}
"""Actions that assign ``request.version`` to agents, so an edge floor bounds them."""


def check_floor(floor: Floor | None, name: str, version: str, what: str) -> None:
    """FailedPrecondition when ``version`` of ``name``'s edge model is below ``floor``."""
    if floor is not None and not floor.allows(version):
        raise FailedPrecondition(
            f"{what}: version {version} of {name} is below the task's signed minimum "
            f"version {floor.version}; agents would refuse it")


def apply(rollout: Rollout, request: Request, versions: Collection[str],
          floor: Floor | None = None) -> Rollout:
    """The record after an operator's action (a new object; ``rollout`` is untouched).

    ``floor``: the task's signed minimum edge version; an edge rollout or pin below it
    is refused (agents would refuse the version)."""
    if rollout.target == "cloud" and request.selector:
        raise InvalidInput("a cloud rollout shares requests, not agents: it takes no selector")
    if rollout.target == "cloud" and request.action in EDGE_ONLY:
        raise InvalidInput("agents are pinned to edge versions only")
    out = rollout.model_copy(deep=True)
    _TRANSITIONS[request.action](out, request, versions)
    if rollout.target == "edge" and request.action in ASSIGNING:
        check_floor(floor, rollout.name, request.version, ASSIGNING[request.action])
    return out


def below_floor(rollout: Rollout | None, floor: Floor) -> list[str]:
    """The versions ``rollout`` assigns (stable, candidate, pins) that ``floor`` refuses,
    in version order."""
    if rollout is None:
        return []
    assigned = {rollout.stable, rollout.candidate, *rollout.pinned.values()} - {None}
    return sorted((v for v in assigned if not floor.allows(v)), key=version_key)


def on_publish(rollout: Rollout, version: str, *, promote: bool,
               floor: Floor | None = None) -> Rollout | None:
    """The record after a version is published; None when the publication leaves it as is.

    A model's first version (or a promoted one) becomes stable; a later cloud version
    becomes the candidate at 0% (not served until given a share or promoted). An edge
    version promoted below ``floor`` is refused.
    """
    out = rollout.model_copy(deep=True)
    if promote and out.target == "edge":
        check_floor(floor, out.name, version, "publish --promote")
    if out.stable is None or promote:
        out.stable, out.candidate, out.percent, out.failures = version, None, 0.0, {}
        out.state = RolloutState.PROMOTED if promote else RolloutState.NONE
        out.note(f"stable {version} (publish)")
        return out
    if out.target != "cloud":
        return None
    if out.candidate is not None and out.percent > 0:
        out.note(f"candidate {out.candidate} at {out.percent:g}% replaced")
    out.candidate, out.percent, out.failures = version, 0.0, {}
    out.state = RolloutState.ACTIVE
    out.note(f"candidate {version} at 0% (publish)")
    return out


def on_swap_failure(rollout: Rollout, version: str, who: str, reason: str) -> Rollout | None:
    """The record after ``who`` failed to swap to ``version``; None when it does not count
    (not the live candidate, or the same failure again)."""
    if rollout.candidate != version or rollout.state not in CANDIDATE_LIVE:
        return None
    if rollout.failures.get(who) == reason[:500]:
        return None
    out = rollout.model_copy(deep=True)
    out.failures[who] = reason[:500]
    if len(out.failures) >= out.max_failures:
        out.note(f"halted {version}: {len(out.failures)} failed swaps; back to {out.stable}")
        out.state = RolloutState.HALTED
    return out
