"""Crash-loop backoff on a clock the test moves: no sleeps, no I/O."""

from __future__ import annotations

import pytest

from reflow_microsandbox.crashloop import CrashLoop


def test_deaths_below_the_threshold_impose_no_wait() -> None:
    loop = CrashLoop(threshold=3, base=1.0, cap=30.0)
    assert [loop.died("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert loop.waiting("a", 0.0) == (0.0, 2)


def test_the_wait_doubles_with_each_death_up_to_the_cap() -> None:
    loop = CrashLoop(threshold=2, base=1.0, cap=5.0)
    waits = [loop.died("a", 100.0) for _ in range(6)]
    assert waits == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert loop.waiting("a", 100.0) == (5.0, 6)
    assert loop.waiting("a", 103.5) == (pytest.approx(1.5), 6)
    assert loop.waiting("a", 105.0) == (0.0, 6)  # the wait is over, the deaths are not


def test_a_healthy_call_forgets_the_deaths() -> None:
    loop = CrashLoop(threshold=2, base=1.0, cap=30.0)
    loop.died("a", 0.0)
    loop.died("a", 0.0)
    loop.healthy("a")
    assert loop.waiting("a", 0.0) == (0.0, 0)
    assert loop.died("a", 0.0) == 0.0  # counted from scratch


def test_keys_back_off_apart() -> None:
    loop = CrashLoop(threshold=1, base=2.0, cap=30.0)
    assert loop.died("bomb", 0.0) == 2.0
    assert loop.waiting("quiet", 0.0) == (0.0, 0)


def test_a_very_long_crash_loop_stays_at_the_cap() -> None:
    loop = CrashLoop(threshold=1, base=1.0, cap=60.0)
    assert max(loop.died("a", 0.0) for _ in range(5000)) == 60.0


@pytest.mark.parametrize(("threshold", "base", "cap"), [(0, 1, 1), (1, 0, 1), (1, 2, 1)])
def test_bad_settings_are_refused(threshold: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        CrashLoop(threshold, base, cap)


def test_after_the_wait_one_call_probes_and_the_others_wait_for_it() -> None:
    loop = CrashLoop(threshold=1, base=1.0, cap=30.0)
    assert loop.admit("a", 0.0) == (True, False)  # no deaths: not a probe
    loop.died("a", 0.0)
    assert loop.admit("a", 0.5) == (False, False)  # waiting
    assert loop.admit("a", 1.0) == (True, True)  # the probe
    assert loop.admit("a", 1.0) == (False, False)  # refused while it runs
    loop.ended("a")  # it ended without a verdict (e.g. a timeout): another may probe
    assert loop.admit("a", 1.0) == (True, True)
    assert loop.died("a", 1.0) == 2.0  # the probe died: a longer wait, no probe running
    assert loop.admit("a", 3.0) == (True, True)
    loop.healthy("a")
    assert loop.admit("a", 3.0) == (True, False)
