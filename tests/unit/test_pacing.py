"""The per-actor pacer (GCRA) on a clock the test moves: no sleeps, no I/O."""

from __future__ import annotations

import pytest

from reflow_microsandbox.pacing import Pacer


def test_a_burst_starts_at_once_then_calls_are_spaced_by_the_interval() -> None:
    pacer = Pacer(rate=10, burst=3, max_delay=5)
    assert [pacer.reserve("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(pacer.reserve("a", 0.0) or 0, 6) for _ in range(3)] == [0.1, 0.2, 0.3]


def test_keys_are_paced_apart() -> None:
    pacer = Pacer(rate=1, burst=1)
    assert pacer.reserve("flood", 0.0) == 0.0
    assert pacer.reserve("flood", 0.0) == 1.0
    assert pacer.reserve("quiet", 0.0) == 0.0


def test_a_call_beyond_max_delay_is_refused_and_reserves_nothing() -> None:
    pacer = Pacer(rate=2, burst=1, max_delay=1.0)
    assert [pacer.reserve("a", 0.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert pacer.reserve("a", 0.0) is None
    assert pacer.reserve("a", 0.0) is None  # still refused: the refusal took no slot
    assert pacer.reserve("a", 0.6) == pytest.approx(0.9)


def test_an_actor_idle_long_enough_gets_its_burst_back_and_is_pruned() -> None:
    pacer = Pacer(rate=10, burst=2)
    for _ in range(4):
        pacer.reserve("a", 0.0)
    pacer.prune(0.1)
    assert pacer.reserve("a", 0.1) == pytest.approx(0.2)
    pacer.prune(10.0)
    assert pacer.reserve("a", 10.0) == 0.0
    assert pacer.reserve("a", 10.0) == 0.0


@pytest.mark.parametrize("args", [(0, 1, 1.0), (1, 0, 1.0), (1, 1, -1.0)])
def test_nonsense_settings_are_refused(args: tuple[float, int, float]) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        Pacer(*args)
