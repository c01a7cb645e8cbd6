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
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend

from .conftest import python_actor, settings
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


def cpu_weight(backend: BubblewrapBackend, sandbox_id: str) -> int:
    """The sandbox's CPU weight as the host's cgroup holds it (v1 cpu.shares, v2 cpu.weight)."""
    manager = backend.cgroups
    assert manager is not None
    if manager.version == 2:
        return int((manager.parents["memory"] / sandbox_id / "cpu.weight").read_text())
    return int((manager.parents["cpu"] / sandbox_id / "cpu.shares").read_text())


def cpu_quota(backend: BubblewrapBackend, sandbox_id: str) -> int:
    """The sandbox's CPU quota in microseconds per 100 ms period, from the host's cgroup."""
    manager = backend.cgroups
    assert manager is not None
    if manager.version == 2:
        return int((manager.parents["memory"] / sandbox_id / "cpu.max").read_text().split()[0])
    return int((manager.parents["cpu"] / sandbox_id / "cpu.cfs_quota_us").read_text())


@pytest.mark.parametrize("per_actor", [False, True], ids=["quota per sandbox", "per actor"])
async def test_an_actor_running_many_sandboxes_weighs_on_the_cpu_as_one(per_actor: bool) -> None:
    # The flooder holds four sandboxes, the quiet actor one: under CPU contention the
    # flooder's four together must weigh what the quiet actor's one weighs; with
    # cpu_limit_per_actor their quotas also sum to one cpu_limit (0.5 CPU: 50 ms/100 ms).
    config = settings(
        python_max=6, max_per_actor=4, call_timeout=20.0, cpu_limit_per_actor=per_actor
    )
    backend = BubblewrapBackend(config)
    await backend.start()
    if backend.cgroups is None:
        await backend.close()
        pytest.skip("no cgroups here (allow_rlimits_only): no CPU weight to give")
    pool = SandboxPool(backend, config)
    await pool.start()
    try:
        floods = [asyncio.create_task(run(pool, SLOW, s=8)) for _ in range(4)]
        await wait_for(lambda: busy(pool, SLOW.key) == 4, "the flooder's four sandboxes to run")
        assert await run(pool, QUIET) == {"output": "served"}
        weights: dict[str | None, list[int]] = {}
        for info in pool.snapshot():
            if info.actor_key is not None:
                weights.setdefault(info.actor_key, []).append(cpu_weight(backend, info.sandbox_id))
        full = 100 if backend.cgroups.version == 2 else 1024
        assert weights[QUIET.key] == [full]
        assert weights[SLOW.key] == [full // 4] * 4
        quotas = {key: [cpu_quota(backend, i.sandbox_id) for i in pool.snapshot()
                        if i.actor_key == key] for key in (SLOW.key, QUIET.key)}  # fmt: skip
        assert quotas[QUIET.key] == [50_000]
        assert quotas[SLOW.key] == [12_500 if per_actor else 50_000] * 4
        assert busy(pool, SLOW.key) == 4  # read while the flood ran
        # A warm sandbox (bound to no actor yet) keeps the kernel's default weight.
        warm = [i.sandbox_id for i in pool.snapshot() if i.state == "warm"]
        assert all(cpu_weight(backend, sandbox_id) == full for sandbox_id in warm)
        assert await asyncio.gather(*floods) == [{"output": 1}] * 4
    finally:
        await pool.close()


FAST = python_actor("fast", "    return 'fast'")


async def test_a_paced_actor_waits_its_turn_is_refused_beyond_it_and_others_are_served(
    make_pool: Any,
) -> None:
    # One start per 5 s for each actor (one at once), at most 7 s of waiting: of four
    # calls at once the first runs, the second waits its turn, the rest are refused.
    pool = await make_pool(
        max_per_actor=1, max_calls_per_second_per_actor=0.2, acquire_timeout=7.0
    )
    flood = [asyncio.create_task(run(pool, FAST)) for _ in range(4)]
    await wait_for(lambda: sum(task.done() for task in flood) >= 3, "three flood calls to end")
    ended = [task.result() if not task.exception() else task.exception()
             for task in flood if task.done()]  # fmt: skip
    assert ended[0] == {"output": "fast"}
    refused = [error for error in ended[1:] if isinstance(error, PoolError)]
    reasons = [(e.kind, e.details["reason"]) for e in refused]
    assert reasons == [("pool_exhausted", "rate_limited")] * 2
    assert "0.2 calls/s" in refused[0].message
    waiting = [task for task in flood if not task.done()]
    assert len(waiting) == 1
    # Another actor is not paced by the flooder's pace: served while the flooder waits.
    assert await run(pool, QUIET) == {"output": "served"}
    assert not waiting[0].done()
    assert await waiting[0] == {"output": "fast"}
