"""The state store's breaker, driven by a hand-set clock (no I/O, no sleeping)."""

from __future__ import annotations

from reflow_microsandbox.state.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_closed_breaker_lets_everything_through() -> None:
    breaker = Breaker(0.5, Clock())
    assert all(breaker.allow() for _ in range(10))
    assert not breaker.open and not breaker.succeeded()


def test_after_a_failure_only_one_probe_per_interval_goes_through() -> None:
    clock = Clock()
    breaker = Breaker(0.5, clock)
    breaker.failed("Timeout reading from socket")
    assert breaker.open
    assert not breaker.allow()  # within the interval: fail at once
    clock.now += 0.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # the others still fail at once
    breaker.failed("Timeout reading from socket")  # the probe failed too
    clock.now += 0.4
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.describe() == "unreachable for 1.0 s (Timeout reading from socket)"


def test_a_success_closes_the_breaker_once() -> None:
    clock = Clock()
    breaker = Breaker(0.5, clock)
    breaker.failed("Timeout reading from socket")
    clock.now += 1
    assert breaker.allow()
    assert breaker.succeeded() is True  # it came back
    assert breaker.succeeded() is False
    assert all(breaker.allow() for _ in range(3))
    assert breaker.describe() == "reachable"
