"""Run-time signals that bend the routing decision.

Each is a small stateful object, pure apart from the clock or random
generator it is given:

- :class:`RttEstimator`: a high quantile of recent cloud round trips, to tell
  whether an escalation fits in the time a request has left.
- :class:`EscalationBudget`: a threshold shift that holds the escalation rate
  near a target.
- :class:`CircuitBreaker`: stops escalating after repeated failures, and
  probes the cloud again after a short, growing, jittered wait, or as soon
  as the connection to it is re-established.
- :class:`ShadowSampler`: picks a random fraction of rows to escalate anyway.

:class:`router.runtime.Router` keeps the four for one policy and turns them
into the :class:`router.decide.Signals` that :func:`router.decide.decide` takes.

None of these objects locks; an asyncio caller uses them from one event loop,
a threaded caller guards them with its own lock.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum

import numpy as np

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "EscalationBudget",
    "RttEstimator",
    "ShadowSampler",
]

Clock = Callable[[], float]
"""Monotonic seconds, for example ``time.monotonic``."""


class RttEstimator:
    """A quantile of the last ``window`` cloud round trips."""

    def __init__(self, quantile: float = 0.9, window: int = 200) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.quantile = quantile
        """Which quantile of the window is the estimate."""
        self._samples: deque[float] = deque(maxlen=window)
        self._estimate: float | None = None
        """The quantile as of the last observation; every request reads it, few change it."""

    def observe(self, seconds: float) -> None:
        """Record one round trip, in seconds."""
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError(f"a round trip must be a finite number >= 0, got {seconds}")
        self._samples.append(float(seconds))
        self._estimate = float(np.quantile(np.fromiter(self._samples, dtype=np.float64),
                                           self.quantile))

    def estimate(self) -> float | None:
        """The expected round trip in seconds; None before any observation."""
        return self._estimate

    @property
    def count(self) -> int:
        """How many round trips the estimate is currently taken over."""
        return len(self._samples)


class EscalationBudget:
    """Holds the escalation rate near ``target_rate`` by shifting the threshold.

    After each observed row, τ ← τ − step·(1[escalated] − target_rate),
    clipped to [−max_shift, +max_shift]. Escalating more often than the target
    drives τ down (a lower threshold, fewer escalations); escalating less
    drives it up, which :func:`router.decide.decide` treats as credit for a
    later burst rather than a reason to escalate more. With ``target_rate``
    None the shift stays 0, and the realised rate is still reported.
    """

    def __init__(
        self,
        target_rate: float | None,
        step: float = 0.01,
        max_shift: float = 0.5,
        window: int = 1000,
    ) -> None:
        if target_rate is not None and not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"target rate must be in [0, 1], got {target_rate}")
        if not step > 0.0:
            raise ValueError(f"step must be > 0, got {step}")
        if not max_shift >= 0.0:
            raise ValueError(f"max shift must be >= 0, got {max_shift}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.target_rate = target_rate
        """Target fraction of rows escalated; None turns the tracker off."""
        self.step = step
        """Step size η per observed row."""
        self.max_shift = max_shift
        """Bound on the shift either way."""
        self._shift = 0.0
        self._recent: deque[bool] = deque(maxlen=window)
        self._recent_escalated = 0

    @property
    def shift(self) -> float:
        """The current threshold shift (negative: fewer escalations)."""
        return self._shift

    @property
    def realised_rate(self) -> float | None:
        """Fraction of the last ``window`` observed rows that escalated; None before any."""
        if not self._recent:
            return None
        return self._recent_escalated / len(self._recent)

    def observe_one(self, escalated: bool) -> None:
        """Record one row (the single-row request's fast path of :meth:`observe`)."""
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_escalated -= recent[0]
        flag = bool(escalated)
        recent.append(flag)
        self._recent_escalated += flag
        target = self.target_rate
        if target is not None:
            bound = self.max_shift
            self._shift = min(max(self._shift - self.step * (flag - target), -bound), bound)

    def observe(self, escalated: bool | np.ndarray | Iterable[bool]) -> None:
        """Record one row (a bool) or several (an array of bools, in order)."""
        if isinstance(escalated, list):
            flags = [bool(flag) for flag in escalated]
        else:
            flags = np.atleast_1d(np.asarray(escalated, dtype=bool)).ravel().tolist()
        recent = self._recent
        if len(flags) >= recent.maxlen:
            recent.clear()
            recent.extend(flags[-recent.maxlen:])
            self._recent_escalated = sum(recent)
        else:
            dropped = len(recent) + len(flags) - recent.maxlen
            if dropped > 0:
                self._recent_escalated -= sum(itertools.islice(recent, dropped))
            recent.extend(flags)
            self._recent_escalated += sum(flags)
        target = self.target_rate
        if target is None:
            return
        # The clip makes each step depend on the last, so this stays a loop.
        bound, step, shift = self.max_shift, self.step, self._shift
        for flag in flags:
            shift = min(max(shift - step * (flag - target), -bound), bound)
        self._shift = shift


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    """Escalations flow."""
    OPEN = "open"
    """The cloud is treated as unavailable."""
    HALF_OPEN = "half_open"
    """One probe escalation is out; its outcome closes or reopens the breaker."""


class CircuitBreaker:
    """Stops escalating after ``failures_to_open`` consecutive failures.

    closed ──failures──▶ open ──wait──▶ half_open (one probe)
    half_open ──success──▶ closed; half_open ──failure──▶ open (a longer wait).

    Call :meth:`allow` right before sending an escalation, and report its
    outcome with :meth:`record_success` or :meth:`record_failure`.
    :meth:`available` asks the same question without taking the probe slot.
    A probe whose outcome is never reported (a cancelled request) frees its
    slot after ``half_open_after_s``.

    The wait before a probe: with ``first_probe_after_s`` (and a generator
    for the jitter), the first probe goes out ``first_probe_after_s`` after
    the breaker opens, and each failed probe doubles the wait, up to
    ``half_open_after_s``; every wait is drawn in [½, 1] of its nominal length,
    so agents that lost the same gateway do not probe it in step. Without
    ``first_probe_after_s`` every wait is ``half_open_after_s``.
    :meth:`reconnected` (the connection to the cloud is up again) makes an
    open breaker probe at once, whatever the wait.
    """

    def __init__(self, failures_to_open: int, half_open_after_s: float, clock: Clock, *,
                 first_probe_after_s: float | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if failures_to_open < 1:
            raise ValueError(f"failures to open must be at least 1, got {failures_to_open}")
        if not half_open_after_s > 0.0:
            raise ValueError(f"half-open delay must be > 0, got {half_open_after_s}")
        if first_probe_after_s is not None and not first_probe_after_s > 0.0:
            raise ValueError(f"first probe delay must be > 0, got {first_probe_after_s}")
        self.failures_to_open = failures_to_open
        """Consecutive failures that open the breaker."""
        self.half_open_after_s = half_open_after_s
        """Longest wait before a probe (every wait, without ``first_probe_after_s``); also
        how long an unreported probe holds the probe slot."""
        self.first_probe_after_s = first_probe_after_s
        """Wait before the first probe after the breaker opens; None: ``half_open_after_s``."""
        self._clock = clock
        self._rng = rng
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._failed_probes = 0  # since the breaker last opened from closed
        self._since = 0.0  # when the probe went out
        self._probe_at = 0.0  # while open: when the next probe may go out

    @property
    def state(self) -> BreakerState:
        """The state as of the last call that changed it."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    @property
    def probe_at(self) -> float | None:
        """While open, the clock reading from which a probe may go out; None otherwise."""
        return self._probe_at if self._state is BreakerState.OPEN else None

    def _wait_s(self) -> float:
        cap = self.half_open_after_s
        first = self.first_probe_after_s
        if first is None:
            return cap
        nominal = min(cap, first * 2.0 ** min(self._failed_probes, 32))
        if self._rng is None:
            return nominal
        return nominal * (0.5 + 0.5 * float(self._rng.random()))

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._probe_at = self._clock() + self._wait_s()

    def _may_probe(self) -> bool:
        if self._state is BreakerState.OPEN:
            return self._clock() >= self._probe_at
        # half open: the probe slot is free again once a probe went unreported too long
        return self._clock() - self._since >= self.half_open_after_s

    def available(self) -> bool:
        """Whether :meth:`allow` would let a request through now; changes nothing."""
        if self._state is BreakerState.CLOSED:
            return True
        return self._may_probe()

    def allow(self) -> bool:
        """Take permission to send one escalation; False while open or while a probe is out."""
        if self._state is BreakerState.CLOSED:
            return True
        if not self._may_probe():
            return False
        self._state = BreakerState.HALF_OPEN
        self._since = self._clock()
        return True

    def reconnected(self) -> None:
        """The connection to the cloud is up again: an open breaker may probe now.

        A probe already out keeps its slot (its outcome decides), and a closed
        breaker is left as it is.
        """
        if self._state is BreakerState.OPEN:
            self._probe_at = self._clock()
            self._failed_probes = 0

    def record_success(self) -> None:
        """An escalation succeeded: closes a half-open breaker; ignored while open."""
        if self._state is BreakerState.OPEN:
            return  # a late answer to a request sent before the breaker opened
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._failed_probes = 0

    def record_failure(self) -> None:
        """An escalation failed: counts toward opening, and reopens a half-open breaker."""
        if self._state is BreakerState.OPEN:
            return  # a late failure must not push the next probe further out
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._failed_probes += 1
            self._open()
        elif self._failures >= self.failures_to_open:
            self._failed_probes = 0
            self._open()


class ShadowSampler:
    """Picks each row independently with probability ``rate``."""

    def __init__(self, rate: float, rng: np.random.Generator) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"shadow rate must be in [0, 1], got {rate}")
        self.rate = rate
        """Fraction of rows picked."""
        self._rng = rng

    def sample(self, n: int) -> np.ndarray:
        """Booleans ``[n]``; rates 0 and 1 answer without drawing from the generator."""
        if n < 0:
            raise ValueError(f"cannot sample {n} rows")
        if self.rate == 0.0:
            return np.zeros(n, dtype=bool)
        if self.rate == 1.0:
            return np.ones(n, dtype=bool)
        return self._rng.random(n) < self.rate
