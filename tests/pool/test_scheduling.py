"""The pool's scheduling over an in-memory backend: acquire, grow, bind, recycle, evict,
per-actor caps, queue_full, warm-up retry, unload, close.

A fast extra layer, not a replacement: the same pool over the real bubblewrap backend is
tested in test_pool.py, test_fairness.py, test_warming.py and test_start_failures.py, and
those tests stay. Here the backend is :mod:`.fake_backend` (in memory; the pool's side of
each sandbox speaks the real runner protocol), so that the pool's decisions can be driven
exhaustively and in milliseconds, including with Hypothesis. Calls that must stay busy
wait on a gate the test opens: nothing here waits for a fixed time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reflow_microsandbox.errors import CallError, PoolError, SandboxError
from reflow_microsandbox.pool import WARMING_AT_ONCE, SandboxPool
from reflow_microsandbox.vocabulary import ActorSource, CallContext, Language
from tests.null_handlers import NoEvents, NoState

from .conftest import settings as pool_settings
from .fake_backend import FakeBackend


class Recorder:
    """A PoolObserver that keeps the kill reasons."""

    def __init__(self) -> None:
        self.killed: Counter[str] = Counter()
        self.started = 0

    def sandbox_started(self, language: Language, seconds: float) -> None:
        self.started += 1

    def sandbox_killed(self, language: Language, reason: str) -> None:
        self.killed[reason] += 1

    def acquire_waited(self, language: Language, seconds: float) -> None:
        pass

    def stray_frames_dropped(self, language: Language, count: int) -> None:
        pass


def actor(name: str, source: str = "ok", language: Language = "python") -> ActorSource:
    return ActorSource(name=name, namespace="default", language=language, source=source)


A, B, C = actor("a"), actor("b"), actor("c")


async def run(pool: SandboxPool, who: ActorSource, **payload: Any) -> dict[str, Any]:
    context = CallContext(actor_id=who.name, namespace=who.namespace, payload=payload)
    return await pool.execute(who, context, NoState(), NoEvents())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the pool's tasks run until ``condition`` holds (bounded by turns, not time)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


Make = Callable[..., Awaitable[tuple[SandboxPool, FakeBackend, Recorder]]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    pools: list[SandboxPool] = []

    async def factory(**overrides: Any) -> tuple[SandboxPool, FakeBackend, Recorder]:
        config = pool_settings(**overrides)
        backend = FakeBackend(
            {"python": config.pool.python.max_instances, "nodejs": config.pool.nodejs.max_instances}
        )
        recorder = Recorder()
        pool = SandboxPool(backend, config, recorder)
        await pool.start()
        pools.append(pool)
        await until(lambda: pool.warmed, "the pool to warm")
        return pool, backend, recorder

    yield factory
    for pool in pools:
        await pool.close()


def busy(pool: SandboxPool, who: ActorSource) -> int:
    return sum(1 for info in pool.snapshot() if info.actor_key == who.key and info.state == "busy")


# -- acquire and bind ------------------------------------------------------------------


async def test_a_first_call_takes_a_warm_sandbox_and_the_pool_warms_another(make: Make) -> None:
    pool, backend, _ = await make(python_min=1)
    [warm] = [info.sandbox_id for info in pool.snapshot() if info.state == "warm"]
    assert (await run(pool, A))["sandbox"] == warm
    await until(lambda: any(i.state == "warm" for i in pool.snapshot()), "a new warm one")
    assert backend.served() == {warm: A.key}


async def test_an_actor_keeps_its_sandbox_and_other_actors_get_their_own(make: Make) -> None:
    pool, backend, _ = await make()
    first = await run(pool, A)
    assert await run(pool, A) == {"sandbox": first["sandbox"], "calls": 2}
    other = await run(pool, B)
    assert other["sandbox"] != first["sandbox"] and other["calls"] == 1
    assert backend.served() == {first["sandbox"]: A.key, other["sandbox"]: B.key}


async def test_a_changed_script_gets_fresh_sandboxes_and_the_old_ones_go(make: Make) -> None:
    pool, backend, recorder = await make()
    old = (await run(pool, A))["sandbox"]
    changed = actor("a", source="ok, version 2")
    new = (await run(pool, changed))["sandbox"]
    assert new != old
    await until(lambda: recorder.killed["reloaded"] == 1, "the old sandbox to be killed")
    assert [s.closed for s in backend.sandboxes if s.sandbox_id == old] == [True]


# -- grow, per-actor cap, queue ----------------------------------------------------------


async def test_concurrent_calls_grow_an_actor_up_to_max_per_actor_and_no_further(
    make: Make,
) -> None:
    pool, backend, _ = await make(python_max=8, max_per_actor=3)
    calls = [asyncio.create_task(run(pool, A, gate="a")) for _ in range(5)]
    await until(lambda: busy(pool, A) == 3, "three sandboxes busy for the actor")
    for _ in range(100):  # the other two stay queued however long the pool runs
        await asyncio.sleep(0)
    assert busy(pool, A) == 3 and backend.running == 3
    backend.gate("a").set()
    results = await asyncio.gather(*calls)
    assert len({r["sandbox"] for r in results}) == 3
    assert sorted(r["calls"] for r in results) == [1, 1, 1, 2, 2]


async def test_calls_beyond_the_queue_are_refused_at_once_with_queue_full(make: Make) -> None:
    pool, backend, _ = await make(python_max=4, max_per_actor=2, max_queued_per_actor=1)
    accepted = [asyncio.create_task(run(pool, A, gate="a")) for _ in range(3)]
    await until(lambda: busy(pool, A) == 2, "two running calls")
    with pytest.raises(PoolError) as refused:
        await run(pool, A)
    assert refused.value.kind == "pool_exhausted"
    assert refused.value.details == {"reason": "queue_full", "queued": 1}
    backend.gate("a").set()
    assert len(await asyncio.gather(*accepted)) == 3


async def test_a_call_that_finds_no_room_in_time_fails_with_timeout(make: Make) -> None:
    pool, backend, _ = await make(python_max=1, python_min=0, acquire_timeout=0.2)
    holder = asyncio.create_task(run(pool, A, gate="a"))
    await until(lambda: busy(pool, A) == 1, "the only sandbox busy")
    with pytest.raises(PoolError) as refused:
        await run(pool, B)
    assert refused.value.kind == "pool_exhausted" and refused.value.details == {"reason": "timeout"}
    backend.gate("a").set()
    await holder


# -- recycle and errors ----------------------------------------------------------------


async def test_a_sandbox_is_recycled_after_max_calls(make: Make) -> None:
    pool, _, recorder = await make(max_calls=3)
    served = [(await run(pool, A))["sandbox"] for _ in range(4)]
    assert served[0] == served[1] == served[2] != served[3]
    assert recorder.killed["recycled"] == 1


async def test_a_script_error_keeps_the_sandbox_and_a_crash_or_timeout_replaces_it(
    make: Make,
) -> None:
    pool, _, recorder = await make()
    first = (await run(pool, A))["sandbox"]
    with pytest.raises(SandboxError) as raised:
        await run(pool, A, **{"raise": "bad input"})
    assert raised.value.kind == "script_error"
    assert (await run(pool, A))["sandbox"] == first
    with pytest.raises(SandboxError) as crashed:
        await run(pool, A, crash=True)
    assert crashed.value.kind == "crashed"
    second = (await run(pool, A))["sandbox"]
    assert second != first
    with pytest.raises(SandboxError) as timed_out:
        await pool.execute(A, CallContext("a", "default", {"gate": "never"}), NoState(), NoEvents(),
                           timeout=0.05)
    assert timed_out.value.kind == "timeout"
    assert (await run(pool, A))["sandbox"] not in (first, second)
    assert recorder.killed["crashed"] == 1 and recorder.killed["timeout"] == 1


async def test_a_script_that_does_not_load_fails_its_call_and_its_sandbox_goes(
    make: Make,
) -> None:
    pool, backend, recorder = await make()
    broken = actor("broken", source="fail: not python")
    with pytest.raises(SandboxError) as raised:
        await run(pool, broken)
    assert raised.value.kind == "load_error"
    await until(lambda: recorder.killed["load_error"] == 1, "the sandbox to be killed")
    assert (await run(pool, A))["calls"] == 1  # the pool serves others as before
    assert not backend.over_cap


# -- evict -------------------------------------------------------------------------------


async def test_an_idle_sandbox_of_a_bigger_actor_is_evicted_for_another_actor(
    make: Make,
) -> None:
    pool, backend, recorder = await make(python_min=0, python_max=2, max_per_actor=2)
    calls = [asyncio.create_task(run(pool, A, gate="a")) for _ in range(2)]
    await until(lambda: busy(pool, A) == 2, "A holds both sandboxes")
    backend.gate("a").set()
    await asyncio.gather(*calls)
    result = await run(pool, B)  # the language is full: one of A's idle ones makes room
    assert recorder.killed["evicted"] == 1
    assert list(backend.served().values()).count(A.key) == 2
    assert backend.served()[result["sandbox"]] == B.key
    assert not backend.over_cap


async def test_the_only_sandbox_of_a_quiet_actor_is_not_evicted(make: Make) -> None:
    pool, backend, recorder = await make(python_min=0, python_max=2, max_per_actor=2,
                                         acquire_timeout=0.2)
    quiet = (await run(pool, A))["sandbox"]
    holder = asyncio.create_task(run(pool, B, gate="b"))
    await until(lambda: busy(pool, B) == 1, "B busy in the second slot")
    with pytest.raises(PoolError):  # B may not take A's only sandbox for a second call
        await run(pool, B)
    assert recorder.killed["evicted"] == 0
    backend.gate("b").set()
    await holder
    assert (await run(pool, A))["sandbox"] == quiet


# -- warm-up, unload, close ---------------------------------------------------------------


async def test_warm_ups_start_a_few_at_a_time(make: Make) -> None:
    _, backend, _ = await make(python_min=5, python_max=6)
    assert backend.spawns == 5 and backend.most_at_once == WARMING_AT_ONCE


async def test_a_failed_warm_up_is_reported_and_tried_again() -> None:
    config = pool_settings(python_min=1, python_max=2)
    backend = FakeBackend({"python": 2, "nodejs": 2})
    backend.spawn_failures = 1
    pool = SandboxPool(backend, config, Recorder())
    await pool.start()
    try:
        await until(lambda: backend.spawns == 1 and not backend.starting, "the first start")
        assert "did not start (injected)" in pool.start_failures()["python"]
        assert not pool.warmed
        assert await pool.wait_warmed(20)  # the pool tries again after 1 s
        assert backend.spawns == 2 and not pool.start_failures()
    finally:
        await pool.close()


async def one_running_one_queued(
    pool: SandboxPool,
) -> tuple[asyncio.Task[dict[str, Any]], asyncio.Task[dict[str, Any]]]:
    """A call of A held at gate ``a`` in the language's only sandbox, and one queued."""
    running = asyncio.create_task(run(pool, A, gate="a"))
    await until(lambda: busy(pool, A) == 1, "the call running")
    waiting = asyncio.create_task(run(pool, A))
    await until(lambda: bool(pool._groups[A.key].waiters), "the second call queued")
    return running, waiting


async def test_unload_fails_the_waiting_calls_and_kills_the_actors_sandboxes(make: Make) -> None:
    pool, backend, recorder = await make(python_max=1, python_min=0)
    running, waiting = await one_running_one_queued(pool)
    await pool.unload(A.key)
    with pytest.raises(PoolError) as unloaded:
        await waiting
    assert unloaded.value.kind == "unavailable" and "unloaded" in unloaded.value.message
    backend.gate("a").set()
    await running  # the busy one finishes its call, then goes
    await until(lambda: recorder.killed["unload"] == 1, "the sandbox to be killed")


async def test_close_fails_waiting_calls_and_closes_every_sandbox(make: Make) -> None:
    pool, backend, _ = await make(python_max=1, python_min=1)
    running, waiting = await one_running_one_queued(pool)
    await pool.close()
    with pytest.raises(PoolError) as closing:
        await waiting
    assert closing.value.kind == "unavailable"
    backend.gate("a").set()
    with pytest.raises((CallError, asyncio.CancelledError)):
        await running
    assert all(sandbox.closed for sandbox in backend.sandboxes)
    with pytest.raises(PoolError):
        await run(pool, B)


# -- any mix of calls ----------------------------------------------------------------------

_WORKLOAD = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(min_value=1, max_value=4),
              st.sampled_from(["ok", "ok", "raise", "crash"])),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=_WORKLOAD,
    python_max=st.integers(min_value=1, max_value=4),
    max_per_actor=st.integers(min_value=1, max_value=3),
    max_calls=st.integers(min_value=1, max_value=4),
)
def test_any_mix_of_calls_keeps_the_caps_and_binds_each_sandbox_to_one_actor(
    workload: list[tuple[str, int, str]], python_max: int, max_per_actor: int, max_calls: int
) -> None:
    """Waves of concurrent calls of three actors: no language ever has more live
    sandboxes than ``max_instances``, no sandbox is loaded twice or serves two actors,
    every call ends with its outputs or the error it asked for (or ``pool_exhausted``),
    and a closed pool leaves nothing alive."""

    async def scenario() -> None:
        config = pool_settings(python_min=1, python_max=python_max,
                               max_per_actor=max_per_actor, max_calls=max_calls,
                               acquire_timeout=5.0)
        backend = FakeBackend({"python": python_max, "nodejs": 2})
        pool = SandboxPool(backend, config, Recorder())
        await pool.start()
        try:
            for name, concurrency, behaviour in workload:
                who = actor(name)
                payload: dict[str, Any] = {}
                if behaviour == "raise":
                    payload["raise"] = "asked to"
                elif behaviour == "crash":
                    payload["crash"] = True
                outcomes = await asyncio.gather(
                    *(run(pool, who, **payload) for _ in range(concurrency)),
                    return_exceptions=True,
                )
                for outcome in outcomes:
                    if isinstance(outcome, PoolError):
                        assert outcome.kind == "pool_exhausted"
                    elif behaviour == "ok":
                        assert isinstance(outcome, dict), outcome
                        assert backend.served()[outcome["sandbox"]] == who.key
                    else:
                        expected = "script_error" if behaviour == "raise" else "crashed"
                        assert isinstance(outcome, SandboxError), outcome
                        assert outcome.kind == expected
                assert not backend.over_cap, backend.over_cap
                assert all(s.calls <= max_calls for s in backend.sandboxes)
        finally:
            await pool.close()
        assert not backend.over_cap, backend.over_cap
        assert all(sandbox.closed for sandbox in backend.sandboxes)
        assert backend.live == {"python": 0, "nodejs": 0}

    asyncio.run(scenario())
