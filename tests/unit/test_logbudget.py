"""The per-actor log budget (a token bucket) on a clock the test moves: no sleeps, no I/O."""

from __future__ import annotations

import pytest

from reflow_microsandbox.logbudget import LogBudget


def test_a_burst_passes_then_lines_are_dropped_until_the_bucket_refills() -> None:
    budget = LogBudget(rate=100, burst=100)
    assert [budget.take("a", 40, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.take("a", 1, 0.0)  # a dropped line costs nothing, but the debt stays
    assert not budget.take("a", 1, 0.2)  # 100 - 120 + 20 = 0: still empty
    assert budget.take("a", 40, 0.3)


def test_one_long_line_passes_whole_and_its_debt_is_repaid_at_the_rate() -> None:
    budget = LogBudget(rate=10, burst=10)
    assert budget.take("a", 1000, 0.0)
    assert not budget.take("a", 1, 50.0)  # -990 + 500
    assert budget.take("a", 1, 99.5)


def test_the_bucket_holds_no_more_than_the_burst() -> None:
    budget = LogBudget(rate=10, burst=20)
    assert budget.take("a", 20, 1000.0)
    assert not budget.take("a", 1, 1000.0)


def test_actors_have_buckets_of_their_own() -> None:
    budget = LogBudget(rate=1, burst=10)
    assert budget.take("flood", 10, 0.0)
    assert not budget.take("flood", 1, 0.0)
    assert budget.take("quiet", 5, 0.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0)])
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        LogBudget(rate, burst)
