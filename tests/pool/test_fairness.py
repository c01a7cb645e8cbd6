"""Fairness of the warm pool over real bubblewrap sandboxes: an actor that floods the
pool gets a clear ``pool_exhausted`` once its queue is full, and never takes the
capacity other actors wait for. The assertions are about outcomes (who was served,
who was refused and how), never about how long anything took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from reflow_microsandbox.errors import CallError, PoolError
from reflow_microsandbox.pool import SandboxPool

from .conftest import python_actor
from .test_pool import run

SLOW = python_actor(
    "flooder", "    import time\n    time.sleep(context.get_input('s'))\n    return 1"
)
QUIET = python_actor("quiet", "    return 'served'")


def busy(pool: SandboxPool, actor_key: str) -> int:
    return sum(1 for i in pool.snapshot() if i.actor_key == actor_key and i.state == "busy")


async def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_flooding_actor_is_refused_once_its_queue_is_full_and_others_are_served(
    make_pool: Any,
) -> None:
    pool = await make_pool(python_max=6, max_per_actor=2, max_queued_per_actor=3)
    accepted = [asyncio.create_task(run(pool, SLOW, s=2)) for _ in range(2 + 3)]
    await wait_for(lambda: busy(pool, SLOW.key) == 2, "the flooder's two sandboxes to run")

    with pytest.raises(PoolError) as refused:
        await run(pool, SLOW, s=2)
    error = refused.value
    assert error.kind == "pool_exhausted"
    assert error.details["reason"] == "queue_full"
    assert "max_queued_per_actor 3" in error.message and "default:flooder" in error.message
    # Refused at once: every accepted call is still running or waiting.
    assert not any(task.done() for task in accepted)

    # Another actor is served meanwhile, and more than once.
    assert [await run(pool, QUIET) for _ in range(3)] == [{"output": "served"}] * 3
    assert not any(task.done() for task in accepted)

    # The accepted calls all finish; the flooder is served again afterwards.
    assert await asyncio.gather(*accepted) == [{"output": 1}] * 5
    assert await run(pool, SLOW, s=0) == {"output": 1}


async def test_no_queueing_beyond_max_per_actor_when_the_queue_limit_is_zero(
    make_pool: Any,
) -> None:
    pool = await make_pool(python_max=4, max_per_actor=2, max_queued_per_actor=0)
    running = [asyncio.create_task(run(pool, SLOW, s=2)) for _ in range(2)]
    await wait_for(lambda: busy(pool, SLOW.key) == 2, "two running calls")
    with pytest.raises(PoolError) as refused:
        await run(pool, SLOW)
    assert refused.value.details["reason"] == "queue_full"
    assert await asyncio.gather(*running) == [{"output": 1}] * 2


async def test_an_actor_holding_the_whole_language_gives_a_sandbox_to_a_starved_actor(
    make_pool: Any,
) -> None:
    # Four python sandboxes in all, and the flooder may hold all four: without fair
    # sharing its queue would keep every one of them (a freed sandbox goes to its own
    # next call) and the quiet actor's call would time out with pool_exhausted.
    pool = await make_pool(
        python_min=1, python_max=4, max_per_actor=4, acquire_timeout=8.0, max_queued_per_actor=64
    )
    stop = asyncio.Event()
    flood_outcomes: list[str] = []

    async def flood() -> None:
        while not stop.is_set():
            try:
                await run(pool, SLOW, s=0.3)
                flood_outcomes.append("ok")
            except CallError as error:
                flood_outcomes.append(error.kind)

    flooders = [asyncio.create_task(flood()) for _ in range(12)]
    try:
        await wait_for(lambda: busy(pool, SLOW.key) == 4, "the flooder to hold all four")
        assert await run(pool, QUIET) == {"output": "served"}
        assert await run(pool, QUIET) == {"output": "served"}
        # The quiet actor now holds one of the four; the flooder keeps the rest.
        held = [i.actor_key for i in pool.snapshot() if i.actor_key is not None]
        assert held.count(QUIET.key) == 1 and held.count(SLOW.key) <= 3
    finally:
        stop.set()
        await asyncio.gather(*flooders)
    assert "ok" in flood_outcomes


async def test_fair_shares_between_two_busy_actors_at_capacity(make_pool: Any) -> None:
    pool = await make_pool(
        python_min=1, python_max=4, max_per_actor=4, acquire_timeout=8.0, max_queued_per_actor=64
    )
    other = python_actor("second", "    import time\n    time.sleep(0.3)\n    return 2")
    stop = asyncio.Event()

    async def keep_calling(actor: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(CallError):
                await run(pool, actor, s=0.3)

    callers = [asyncio.create_task(keep_calling(SLOW)) for _ in range(8)]
    try:
        await wait_for(lambda: busy(pool, SLOW.key) == 4, "the first actor to hold all four")
        callers += [asyncio.create_task(keep_calling(other)) for _ in range(8)]
        # The two converge to two sandboxes each (bounded wait for the outcome).
        await wait_for(
            lambda: busy(pool, SLOW.key) == 2 and busy(pool, other.key) == 2,
            "two sandboxes each",
        )
    finally:
        stop.set()
        await asyncio.gather(*callers)
