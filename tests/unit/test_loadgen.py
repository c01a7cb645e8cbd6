"""The load generator's pure parts: the step search, percentiles, reading answers."""

from __future__ import annotations

import math

from tests.reliability.loadgen import (
    OK,
    Outcome,
    RateSearch,
    answer_of,
    percentile,
    summarize,
)


def drive(search: RateSearch, sustainable: float) -> list[float]:
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.record(rate, rate <= sustainable)
    return tried


def test_search_doubles_until_a_failure_then_bisects_to_the_precision() -> None:
    search = RateSearch(start=100, factor=2, precision=0.05, max_steps=20)
    tried = drive(search, sustainable=730)
    assert tried[:4] == [100, 200, 400, 800]
    assert search.best is not None and search.failed is not None
    assert search.best <= 730 < search.failed
    assert search.failed - search.best <= 0.05 * search.failed


def test_search_is_bounded_in_steps_and_by_the_ceiling() -> None:
    assert len(drive(RateSearch(start=10, max_steps=3), sustainable=1e9)) == 3
    search = RateSearch(start=100, ceiling=300)
    assert drive(search, sustainable=1e9) == [100, 200, 300]
    assert search.best == 300 and search.failed is None


def test_search_goes_below_the_start_when_the_start_fails_and_gives_up_eventually() -> None:
    search = RateSearch(start=800, factor=2, precision=0.1)
    tried = drive(search, sustainable=300)
    assert tried[:3] == [800, 400, 200]
    assert search.best is not None and 200 <= search.best <= 300
    hopeless = RateSearch(start=100, factor=2)
    assert drive(hopeless, sustainable=0) == [100, 50, 25, 12.5]
    assert hopeless.best is None


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 0.5) == 500
    assert percentile(values, 0.99) == 990
    assert percentile(values, 0.999) == 999
    assert percentile([7.0], 0.999) == 7
    assert math.isnan(percentile([], 0.5))


def test_summary_counts_errors_by_kind_and_times_successes_only() -> None:
    outcomes = [Outcome(i, OK, 0.001 * (i + 1)) for i in range(98)]
    outcomes += [Outcome(98, "pool_exhausted", 5.0), Outcome(99, "timeout", 30.0)]
    summary = summarize(outcomes, rate=100, window=1.0, lag=0.0)
    assert summary.ok == 98 and summary.calls == 100
    assert summary.errors == {"pool_exhausted": 1, "timeout": 1}
    assert summary.max == 0.098
    assert not summary.passed(p99_bound=1.0)
    clean = summarize(outcomes[:98], rate=98, window=1.0, lag=0.0)
    assert clean.passed(p99_bound=0.1) and not clean.passed(p99_bound=0.05)


def test_answers_are_read_as_reflow_reads_them() -> None:
    ok = answer_of({"jsonrpc": "2.0", "id": "x", "result": {"outputs": {"out": 1}}})
    assert ok == (OK, "", {"out": 1})
    error = {"code": -32008, "message": "redis down", "data": {"kind": "state_error"}}
    failed = answer_of({"id": "x", "error": error})
    assert failed == ("state_error", "redis down", None)
    assert answer_of({"id": "x", "error": {"code": -32601, "message": "no"}})[0] == "code -32601"
    # An "error" key inside result fails the call too.
    assert answer_of({"id": "x", "result": {"error": None}})[0] != OK
