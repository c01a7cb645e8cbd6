"""Crash-loop backoff in the pool: an actor whose calls keep killing their sandbox gets
no new sandbox for a while, its calls are refused at once, and other actors are served.

Over the in-memory backend (:mod:`.fake_backend`, a fast extra layer: ``{"crash": True}``
makes the runner die mid-call), and once over real bubblewrap with real out-of-memory
kills. The backoff's arithmetic (doubling, cap, reset) is in tests/unit/test_crashloop.py;
nothing here waits for a fixed time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reflow_microsandbox.errors import PoolError, SandboxError
from tests.null_handlers import NoEvents, NoState

from . import test_scheduling
from .conftest import context, python_actor
from .test_scheduling import A, B, Make, run

make = test_scheduling.make  # the fixture: a pool over the in-memory backend


async def crash(pool: Any, who: Any) -> str:
    with pytest.raises(SandboxError) as raised:
        await run(pool, who, crash=True)
    return raised.value.kind


async def test_after_the_threshold_calls_are_refused_at_once_and_no_sandbox_starts(
    make: Make,
) -> None:
    pool, backend, _ = await make(crash_loop_threshold=2, crash_loop_backoff=600.0,
                                  crash_loop_backoff_max=600.0)  # fmt: skip
    assert [await crash(pool, A), await crash(pool, A)] == ["crashed", "crashed"]
    started = len(backend.sandboxes)
    for _ in range(5):
        with pytest.raises(PoolError) as refused:
            await run(pool, A)
        error = refused.value
        assert error.kind == "pool_exhausted"
        assert error.details["reason"] == "crash_loop"
        assert 0 < error.details["retry_after"] <= 600
        assert "crash loop" in str(error) and "crash_loop_backoff" in str(error)
    assert len(backend.sandboxes) == started  # nothing was started for the refused calls
    assert (await run(pool, B))["sandbox"]  # another actor is served meanwhile


async def test_a_call_that_returns_forgets_the_deaths(make: Make) -> None:
    pool, _, _ = await make(crash_loop_threshold=2, crash_loop_backoff=600.0,
                            crash_loop_backoff_max=600.0)  # fmt: skip
    for _ in range(3):
        assert await crash(pool, A) == "crashed"
        assert (await run(pool, A))["sandbox"]  # a healthy call between deaths: never refused
    with pytest.raises(SandboxError):
        await run(pool, A, **{"raise": "bad input"})  # a script error keeps its sandbox
    assert await crash(pool, A) == "crashed"
    assert await crash(pool, A) == "crashed"
    with pytest.raises(PoolError):
        await run(pool, A)


async def test_after_the_wait_a_call_runs_again(make: Make) -> None:
    pool, _, _ = await make(crash_loop_threshold=1, crash_loop_backoff=0.05,
                            crash_loop_backoff_max=0.05)  # fmt: skip
    assert await crash(pool, A) == "crashed"
    with pytest.raises(PoolError):
        await run(pool, A)
    for _ in range(200):  # bounded: the wait is 0.05 s
        try:
            assert (await run(pool, A))["sandbox"]
            return
        except PoolError as error:
            assert error.details["reason"] == "crash_loop"
            await asyncio.sleep(error.details["retry_after"])
    raise AssertionError("the actor was never served again")


async def test_zero_turns_the_backoff_off(make: Make) -> None:
    pool, _, _ = await make(crash_loop_threshold=0)
    for _ in range(4):
        assert await crash(pool, A) == "crashed"
    assert (await run(pool, A))["sandbox"]


BOMB = python_actor(
    "bomb", "    hoard = []\n    while True:\n        hoard.append(bytearray(8 * 1024 * 1024))"
)
QUIET = python_actor("quiet", "    return {'ok': True}")


async def test_real_out_of_memory_kills_put_the_actor_in_a_crash_loop(make_pool: Any) -> None:
    """Real bubblewrap sandboxes, killed by their cgroup's OOM killer (memory_mb 128)."""
    pool = await make_pool(crash_loop_threshold=2, crash_loop_backoff=600.0,
                           crash_loop_backoff_max=600.0)  # fmt: skip

    async def call(who: Any) -> dict[str, Any]:
        return await pool.execute(who, context(who), NoState(), NoEvents())

    for _ in range(2):
        with pytest.raises(SandboxError) as raised:
            await call(BOMB)
        assert raised.value.kind == "memory"
    with pytest.raises(PoolError) as refused:
        await call(BOMB)
    assert refused.value.details["reason"] == "crash_loop"
    assert not [info for info in pool.snapshot() if info.actor_key == BOMB.key]
    assert await call(QUIET) == {"ok": True}


async def test_refusals_of_a_paced_actor_are_paced_too(make: Make) -> None:
    """A client that retries refused calls at once must not become a flood of fast calls
    beyond the actor's max_calls_per_second_per_actor: pacing comes first."""
    pool, _, _ = await make(crash_loop_threshold=1, crash_loop_backoff=600.0,
                            crash_loop_backoff_max=600.0, max_per_actor=1,
                            max_calls_per_second_per_actor=0.01, acquire_timeout=1.0)  # fmt: skip
    assert await crash(pool, A) == "crashed"
    with pytest.raises(PoolError) as refused:
        await run(pool, A)
    assert refused.value.details["reason"] == "rate_limited"


async def test_after_the_wait_one_call_probes_and_the_others_are_refused_until_it_ends(
    make: Make,
) -> None:
    pool, backend, _ = await make(crash_loop_threshold=1, crash_loop_backoff=0.05,
                                  crash_loop_backoff_max=0.05)  # fmt: skip
    assert await crash(pool, A) == "crashed"
    probe: asyncio.Task[dict[str, Any]] | None = None
    for _ in range(200):  # bounded: the wait is 0.05 s
        probe = asyncio.create_task(run(pool, A, gate="probe"))
        await asyncio.sleep(0.01)
        if not probe.done():
            break  # admitted: it waits on its gate
        with pytest.raises(PoolError):
            probe.result()
    assert probe is not None and not probe.done(), "no call was let through after the wait"
    with pytest.raises(PoolError) as refused:
        await run(pool, A)
    assert refused.value.details == {"reason": "crash_loop", "retry_after": 0.0}
    backend.gate("probe").set()
    assert (await probe)["sandbox"]
    assert (await run(pool, A))["sandbox"]  # the probe returned: the deaths are forgotten
