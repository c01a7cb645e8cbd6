"""Crash-loop backoff: an actor whose sandboxes keep dying waits before the next one (no I/O).

An actor whose calls kill their sandbox (``memory``: the cgroup's OOM killer;
``crashed``: the runner died; ``output_too_large``; the pool says which kinds count)
costs the node a cold start per call: a new sandbox is
spawned, loaded, and killed again. From ``threshold`` such deaths in a row on, the
actor is *backing off*: for ``base * 2 ** (deaths - threshold)`` seconds (at most
``cap``) its calls are refused at once, so no sandbox is started for it meanwhile;
after the wait one call runs (the *probe*; the others are still refused until it
ends, as a circuit breaker's half-open state), and either dies (a longer wait) or
returns, which forgets the actor's deaths. Other actors are untouched: the state is per key.

The same scheme as Kubernetes' ``CrashLoopBackOff`` (10 s doubling to 5 min, reset
after 10 min of running; https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#restart-policy),
with a reset by a healthy call instead of a healthy period.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Deaths:
    count: int = 0
    until: float = 0.0  # monotonic seconds: calls are refused before it
    probing: bool = False  # the one call let through after the wait is running


@dataclass
class CrashLoop:
    """Per-key crash-loop state; times in seconds of one monotonic clock the caller passes.

    ``threshold`` (>= 1): deaths in a row before the first wait; ``base`` (> 0): the
    first wait; ``cap`` (>= base): the longest. Raises ValueError on other values.
    """

    threshold: int
    base: float
    cap: float
    _deaths: dict[str, _Deaths] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.base <= 0 or self.cap < self.base:
            raise ValueError("threshold must be >= 1, base > 0 and cap >= base")

    def died(self, key: str, now: float) -> float:
        """A sandbox of ``key`` died of its call; returns the wait now imposed (0: none yet)."""
        deaths = self._deaths.setdefault(key, _Deaths())
        deaths.count += 1
        deaths.probing = False
        if deaths.count < self.threshold:
            return 0.0
        wait = min(self.cap, self.base * 2.0 ** min(deaths.count - self.threshold, 62))
        deaths.until = now + wait
        return wait

    def healthy(self, key: str) -> None:
        """A call of ``key`` returned from a sandbox that lives on: its deaths are forgotten."""
        self._deaths.pop(key, None)

    def admit(self, key: str, now: float) -> tuple[bool, bool]:
        """Whether a call of ``key`` may start at ``now``, and if so whether it is the
        probe (then :meth:`ended` must follow it, whatever its outcome). Refused
        while the wait lasts, and after it while the probe runs."""
        deaths = self._deaths.get(key)
        if deaths is None or deaths.count < self.threshold:
            return True, False
        if now < deaths.until or deaths.probing:
            return False, False
        deaths.probing = True
        return True, True

    def ended(self, key: str) -> None:
        """The probe call of ``key`` ended (after :meth:`died` or :meth:`healthy`, or
        without either: a timeout, a refusal): the next call may probe again."""
        deaths = self._deaths.get(key)
        if deaths is not None:
            deaths.probing = False

    def waiting(self, key: str, now: float) -> tuple[float, int]:
        """Seconds ``key`` must still wait before a call may start (0: none), and its
        deaths in a row."""
        deaths = self._deaths.get(key)
        if deaths is None:
            return 0.0, 0
        return max(0.0, deaths.until - now), deaths.count
