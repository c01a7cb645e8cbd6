"""The warm pool over real bubblewrap sandboxes: binding, reuse, growth, order, limits."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from reflow_microsandbox.errors import CallError, PoolError, SandboxError
from tests.runtime.helpers import DictState, Events

from .conftest import context, module_actor, python_actor

COUNTING = """
calls = 0

@actor
async def process(context):
    global calls
    calls += 1
    return {"calls": calls}
"""

ORDERED = """
import asyncio
seen = []

@actor
async def process(context):
    seen.append(context.get_input("n"))
    await asyncio.sleep(0.001)
    return {"seen": list(seen)}
"""


def states(pool: Any, actor_key: str | None = None) -> list[str]:
    return sorted(
        info.state for info in pool.snapshot() if actor_key is None or info.actor_key == actor_key
    )


async def eventually(check: Any, what: str, timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def run(pool: Any, actor: Any, **payload: Any) -> dict[str, Any]:
    return await pool.execute(actor, context(actor, **payload), DictState(), Events())


async def test_min_instances_are_prewarmed_per_language(make_pool: Any) -> None:
    pool = await make_pool(python_min=2, node_min=1)
    by_language = sorted((i.language, i.state) for i in pool.snapshot())
    assert by_language == [("nodejs", "warm"), ("python", "warm"), ("python", "warm")]
    assert all(i.memory_bytes is None or i.memory_bytes > 0 for i in pool.snapshot())


async def test_an_actor_is_loaded_once_and_its_sandbox_reused(make_pool: Any) -> None:
    pool = await make_pool()
    actor = module_actor("counting", COUNTING)
    results = [await run(pool, actor) for _ in range(5)]
    assert [r["calls"] for r in results] == [1, 2, 3, 4, 5]
    assert states(pool, actor.key) == ["idle"]
    # the warm sandbox it took is replaced in the background
    await eventually(lambda: "warm" in states(pool), "the warm sandbox was not replaced")


async def test_a_sandbox_serves_one_actor_only(make_pool: Any) -> None:
    pool = await make_pool()
    first = module_actor("first", COUNTING)
    second = module_actor("second", COUNTING)
    assert (await run(pool, first))["calls"] == 1
    assert (await run(pool, second))["calls"] == 1
    assert (await run(pool, first))["calls"] == 2
    assert states(pool, first.key) == ["idle"] and states(pool, second.key) == ["idle"]


async def test_calls_of_one_actor_start_in_arrival_order(make_pool: Any) -> None:
    pool = await make_pool(max_per_actor=1)
    actor = module_actor("ordered", ORDERED)
    results = await asyncio.gather(*(run(pool, actor, n=n) for n in range(30)))
    assert results[-1]["seen"] == list(range(30))


async def test_concurrent_load_grows_an_actor_up_to_its_cap(make_pool: Any) -> None:
    pool = await make_pool(python_max=6, max_per_actor=3)
    actor = python_actor("slow", "    import asyncio\n    await asyncio.sleep(0.3)\n    return 1")
    results = await asyncio.gather(*(run(pool, actor) for _ in range(9)))
    assert results == [{"output": 1}] * 9
    assert len(states(pool, actor.key)) == 3


async def test_exhausted_pool_fails_fast_with_a_clear_error(make_pool: Any) -> None:
    pool = await make_pool(python_min=1, python_max=1, acquire_timeout=0.3)
    slow = python_actor("slow", "    import asyncio\n    await asyncio.sleep(2)\n    return 1")
    other = python_actor("other", "    return 2")
    busy = asyncio.create_task(run(pool, slow))
    await eventually(lambda: states(pool, slow.key) == ["busy"], "the slow call did not start")
    with pytest.raises(PoolError) as error:
        await run(pool, other)
    assert error.value.kind == "pool_exhausted"
    assert "python" in error.value.message and "max_instances 1" in error.value.message
    # Failed while the only sandbox was still busy: the acquire timeout (0.3 s), not the
    # slow call's end (2 s), decided it.
    assert not busy.done(), "the acquire waited for the busy sandbox instead of timing out"
    assert await busy == {"output": 1}
    # once the slow call is done, the other actor evicts the idle sandbox and runs
    assert await run(pool, other) == {"output": 2}


async def test_idle_bound_sandboxes_are_recycled(make_pool: Any) -> None:
    pool = await make_pool(idle_timeout=0.3)
    actor = module_actor("counting", COUNTING)
    assert (await run(pool, actor))["calls"] == 1
    await eventually(lambda: states(pool, actor.key) == [], "the idle sandbox was kept")
    assert (await run(pool, actor))["calls"] == 1  # a fresh sandbox


async def test_a_sandbox_is_recycled_after_max_calls(make_pool: Any) -> None:
    pool = await make_pool(max_calls=3)
    actor = module_actor("counting", COUNTING)
    counts = [(await run(pool, actor))["calls"] for _ in range(7)]
    assert counts == [1, 2, 3, 1, 2, 3, 1]


async def test_a_broken_limit_replaces_the_sandbox_and_the_next_call_works(make_pool: Any) -> None:
    pool = await make_pool(call_timeout=0.5)
    looping = module_actor(
        "looping",
        COUNTING.replace(
            "    return", "    if context.get_input('spin'):\n        while True: pass\n    return"
        ),
    )
    assert (await run(pool, looping))["calls"] == 1
    with pytest.raises(SandboxError) as error:
        await run(pool, looping, spin=True)
    assert error.value.kind == "timeout"
    assert (await run(pool, looping))["calls"] == 1  # new sandbox, script loaded afresh


async def test_a_script_error_keeps_the_sandbox(make_pool: Any) -> None:
    pool = await make_pool()
    actor = module_actor(
        "raising",
        COUNTING.replace(
            "    return",
            "    if context.get_input('fail'):\n        raise ValueError('bad input')\n    return",
        ),
    )
    assert (await run(pool, actor))["calls"] == 1
    with pytest.raises(SandboxError) as error:
        await run(pool, actor, fail=True)
    assert error.value.kind == "script_error" and "bad input" in error.value.message
    assert (await run(pool, actor))["calls"] == 3


async def test_a_script_that_does_not_load_fails_clearly_and_others_still_run(
    make_pool: Any,
) -> None:
    pool = await make_pool()
    broken = module_actor("broken", "@actor\nasync def process(context)\n    return 1\n")
    with pytest.raises(SandboxError) as error:
        await run(pool, broken)
    assert error.value.kind == "load_error"
    assert await run(pool, python_actor("fine", "    return 'ok'")) == {"output": "ok"}


async def test_unload_throws_the_actors_sandboxes_away(make_pool: Any) -> None:
    pool = await make_pool()
    actor = module_actor("counting", COUNTING)
    await run(pool, actor)
    await run(pool, actor)
    await pool.unload(actor.key)
    assert states(pool, actor.key) == []
    assert (await run(pool, actor))["calls"] == 1


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid or int(fields[1]) in found:
            found.add(int(entry))
    return found


def _describe(pids: set[int]) -> list[str]:
    described = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            command, state = "?", "gone"
        described.append(f"{pid} [{state}] {command[:200]}")
    return described


async def test_close_kills_every_sandbox_busy_ones_too(make_pool: Any) -> None:
    # Processes earlier tests left under this pytest process (session fixtures) are not
    # the pool's: only what appears from here on must be gone after close().
    before = _descendants(os.getpid())
    pool = await make_pool(python_min=2, node_min=1)
    slow = python_actor("slow", "    import asyncio\n    await asyncio.sleep(30)\n")
    busy = asyncio.create_task(run(pool, slow))
    await eventually(lambda: states(pool, slow.key) == ["busy"], "the slow call did not start")
    assert _descendants(os.getpid()) - before, "no sandbox process was running"
    await pool.close()
    with pytest.raises((CallError, asyncio.CancelledError)):
        await busy
    # Killed processes leave /proc once the kernel has torn them down and they are
    # reaped, which takes a while on a busy machine: wait for that, within a bound.
    left = _descendants(os.getpid()) - before
    for _ in range(200):
        if not left:
            break
        await asyncio.sleep(0.05)
        left = _descendants(os.getpid()) - before
    assert left == set(), f"processes outlived pool.close(): {_describe(left)}"
