"""Fail fast while the state store is known to be unreachable (a circuit breaker, no I/O).

Without it, every call that needs state while Redis is frozen or its host is gone
waits out the socket timeout, holding its sandbox and its actor's lock, so that the
calls behind it queue until the pool refuses them (``pool_exhausted``) and fail long
after the store came back. With it, once an operation timed out, the others fail at
once with a ``state_error`` that says so, and one operation per ``probe_interval`` is
let through to find out whether the store is back; the first success (or a health
check that answers) closes the breaker.

    breaker = Breaker(probe_interval=0.5)
    if not breaker.allow():
        raise StateError(breaker.describe())      # fail at once
    try: ...; breaker.succeeded()
    except ConnectionError as error: breaker.failed(str(error)); raise
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Open after an unreachable-store failure; one probe per ``probe_interval`` seconds."""

    def __init__(
        self, probe_interval: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.probe_interval = probe_interval
        self._clock = clock
        self.down_since: float | None = None
        self.reason = ""
        self._next_probe = 0.0

    @property
    def open(self) -> bool:
        """Whether the store is believed unreachable."""
        return self.down_since is not None

    def allow(self) -> bool:
        """Whether to try an operation now: always while closed; while open, only the
        first caller after each ``probe_interval`` (the probe)."""
        if self.down_since is None:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.probe_interval
        return True

    def failed(self, reason: str) -> None:
        """An operation failed because the store did not answer in time."""
        now = self._clock()
        if self.down_since is None:
            self.down_since = now
        self.reason = reason
        self._next_probe = max(self._next_probe, now + self.probe_interval)

    def succeeded(self) -> bool:
        """The store answered; True when this closed an open breaker (it came back)."""
        if self.down_since is None:
            return False
        self.down_since = None
        self.reason = ""
        return True

    def describe(self) -> str:
        """Why operations fail now, e.g. ``unreachable for 3.2 s (Connection refused)``."""
        if self.down_since is None:
            return "reachable"
        return f"unreachable for {self._clock() - self.down_since:.1f} s ({self.reason})"
