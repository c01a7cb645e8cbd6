"""Per-actor call pacing: at most ``rate`` calls per second per actor, bursts allowed (no I/O).

The generic cell rate algorithm (GCRA, as in ATM traffic shaping and the usual
token-bucket rate limiters): each key keeps a *theoretical arrival time* ``tat``; a call
at ``now`` may start at ``max(now, tat - tolerance)`` and moves ``tat`` on by one
interval. ``tolerance`` lets ``burst`` calls through back to back before pacing starts.
A call whose start would be more than ``max_delay`` seconds away is refused and
reserves nothing.

Why: on a small node one actor flooding it with fast calls takes the control plane's
event loop (every call costs parsing, dispatch and relaying, whichever sandbox runs it),
and other actors' calls wait behind its work. Pacing the flood's calls (they wait, with
no cost, before they start) bounds that share; see ``sandbox.pool.max_calls_per_second_per_actor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Pacer:
    """``rate`` calls/s per key (> 0), ``burst`` calls at once (>= 1); times in seconds of
    one monotonic clock that the caller passes in."""

    rate: float
    burst: int = 1
    max_delay: float = 5.0
    _tat: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.max_delay < 0:
            raise ValueError("rate must be > 0, burst >= 1 and max_delay >= 0")

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    def reserve(self, key: str, now: float) -> float | None:
        """Reserve the next start for ``key``: seconds to wait (0: start now), or None
        when that wait would exceed ``max_delay`` (nothing is reserved then)."""
        tat = max(self._tat.get(key, now), now)
        start = max(now, tat - (self.burst - 1) * self.interval)
        delay = start - now
        if delay > self.max_delay:
            return None
        self._tat[key] = tat + self.interval
        return delay

    def prune(self, now: float) -> None:
        """Forget keys that are back to a full burst (keeps the table small)."""
        for key in [key for key, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
