"""Per-actor budget of log output relayed to clients (no I/O).

Why: every log line a script writes (``print``, raw writes to fd 1/2, ``context.log``)
becomes a ``log`` notification on the caller's connection: JSON-encoded, framed, sent
through the balancer. An actor printing in a loop makes the control plane's one event
loop relay up to ``max_output_bytes`` (8 MiB) per call, and other actors' calls wait
behind that work (``bench/load.py fairness --floods output``: the quiet actor's p50 went
from 1.6 to 39 ms). A budget per actor bounds that share; what is over it is dropped
(the call still counts it against ``max_output_bytes``).

A token bucket per key: ``rate`` units per second, holding at most ``burst``. A message
passes when the bucket is not empty, and takes its whole size (the bucket may go into
debt: one long line passes whole, then the actor waits for the debt to be repaid);
otherwise it is dropped and costs nothing. Times are seconds of one monotonic clock
that the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LogBudget:
    """``rate`` (> 0) units per second per key, at most ``burst`` (>= 1) saved up.

    Raises ValueError on other values.
    """

    rate: float
    burst: float
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key: (level, at)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")

    def take(self, key: str, size: int, now: float) -> bool:
        """Whether a message of ``size`` units of ``key`` may pass at ``now`` (and charge it)."""
        level, at = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if level <= 0:
            self._buckets[key] = (level, now)
            return False
        self._buckets[key] = (level - size, now)
        return True
