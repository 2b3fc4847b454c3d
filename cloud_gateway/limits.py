"""Per-agent escalation limits: a token bucket of rows for each calling agent.

The gateway's models are what a fleet pays for and what an attacker would like
to copy: an agent's token in the wrong hands (or a device app that forces
``route=cloud`` on every request) could otherwise pull the cloud model's answers
without limit. Each agent (by the identity its token or certificate proves)
draws its escalated rows from a bucket that refills at ``rows_per_s`` up to
``burst`` rows; a request the bucket cannot pay for is refused with
:class:`~core.errors.Overloaded` (``RESOURCE_EXHAUSTED``), which the agent
answers at the edge and counts. The limit of an agent is the one set for its
id, else the strictest one set for a label it has (as it last announced them
to this replica), else the default; operators and open gateways (no
identities) are not limited. Each replica meters the calls it serves, so
behind a balancer spreading requests over N replicas an agent may get up to N
times its limit at once, and its long-run average stays near N times the rate:
set it per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgecloud.core.auth import AGENT, current_principal
from edgecloud.core.errors import Overloaded
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Rows per second on average, and the most rows at once after a quiet spell."""

    rows_per_s: float
    burst: int

    @classmethod
    def of(cls, rows_per_s: float, burst: int | None = None) -> RateLimit:
        """A limit; ``burst`` defaults to one second's worth (at least one row)."""
        return cls(rows_per_s, burst if burst is not None else max(math.ceil(rows_per_s), 1))

    def describe(self) -> str:
        """``5 rows/s, burst 20`` (for messages)."""
        return f"{self.rows_per_s:g} rows/s, burst {self.burst}"


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled at ``rows_per_s``; starts full."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._updated = now

    def take(self, n: int, now: float) -> bool:
        """Take ``n`` tokens if the bucket holds them; False (taking none) otherwise."""
        elapsed = max(now - self._updated, 0.0)
        self._updated = now
        self._tokens = min(self._tokens + elapsed * self.limit.rows_per_s,
                           float(self.limit.burst))
        if n > self._tokens:
            return False
        self._tokens -= n
        return True


class EscalationLimiter:
    """The buckets of the agents that called this replica, and which limit each one has."""

    def __init__(self, default: RateLimit | None = None,
                 agents: Mapping[str, RateLimit] | None = None,
                 labels: Mapping[tuple[str, str], RateLimit] | None = None, *,
                 labels_of: Callable[[str], Mapping[str, str] | None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``labels`` maps a ``(key, value)`` label to a limit; ``labels_of`` gives the
        labels an agent last announced (None when it has not)."""
        self._default = default
        self._agents = dict(agents or {})
        self._labels = dict(labels or {})
        self._labels_of = labels_of
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """True when any agent can be limited."""
        return bool(self._default or self._agents or self._labels)

    def limit_for(self, agent_id: str) -> RateLimit | None:
        """The agent's limit: its own, else its strictest label's, else the default."""
        own = self._agents.get(agent_id)
        if own is not None:
            return own
        labels = self._labels_of(agent_id) or {}
        matching = [limit for (key, value), limit in self._labels.items()
                    if labels.get(key) == value]
        if matching:
            return min(matching, key=lambda limit: (limit.rows_per_s, limit.burst))
        return self._default

    def admit(self, agent_id: str, rows: int) -> None:
        """Charge ``rows`` to the agent; Overloaded when its bucket cannot pay."""
        limit = self.limit_for(agent_id)
        if limit is None:
            return
        now = self._clock()
        bucket = self._buckets.get(agent_id)
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[agent_id] = TokenBucket(limit, now)
        if bucket.take(rows, now):
            return
        if rows > limit.burst:
            raise Overloaded(f"agent {agent_id}: a request of {rows} rows is larger than its "
                             f"escalation limit allows at once ({limit.describe()})")
        raise Overloaded(f"agent {agent_id} is over its escalation limit "
                         f"({limit.describe()}); answer at the edge")


def request_rows(request: InferRequest) -> int:
    """Rows a request asks the cloud for (its first input's first dimension, at least 1)."""
    first = next(iter(request.inputs.values()), None)
    rows = int(first.shape[0]) if first is not None and getattr(first, "ndim", 0) else 1
    return max(rows, 1)


class LimitedPlane:
    """A data plane whose inference calls are charged to the calling agent first.

    The caller is the one the gateway's auth interceptor admitted for this call
    (:func:`core.auth.current_principal`); everything else passes through.
    """

    def __init__(self, plane, limiter: EscalationLimiter,
                 on_refused: Callable[[int], None] | None = None) -> None:
        self._plane = plane
        self._limiter = limiter
        self._on_refused = on_refused
        self.server_name = plane.server_name
        self.server_version = plane.server_version

    @property
    def ready(self) -> bool:
        """As the wrapped plane."""
        return self._plane.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        """As the wrapped plane."""
        return self._plane.model_ready(name, version)

    def metadata(self, name: str, version: str = "") -> ModelInfo:
        """As the wrapped plane."""
        return self._plane.metadata(name, version)

    async def infer(self, request: InferRequest, time_left_s: float | None = None,
                    request_id: str = "") -> InferResponse:
        """Charge the calling agent's bucket, then infer; Overloaded when it is empty."""
        who = current_principal()
        if who is not None and who.role == AGENT:
            rows = request_rows(request)
            try:
                self._limiter.admit(who.agent_id, rows)
            except Overloaded:
                if self._on_refused is not None:
                    self._on_refused(rows)
                raise
        return await self._plane.infer(request, time_left_s, request_id)
