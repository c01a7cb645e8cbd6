"""Transaction semantics every store must have (each test runs on Redis and on SQLite)."""

from __future__ import annotations

import asyncio

import pytest

from reflow_microsandbox.errors import StateError
from reflow_microsandbox.state import RedisStore, SqliteStore, StateStore


def twin(store: StateStore, *, lock_timeout: float) -> StateStore:
    """A second, independent store on the same backend (as another process would have)."""
    if isinstance(store, RedisStore):
        return RedisStore(store.url, lock_timeout=lock_timeout)
    assert isinstance(store, SqliteStore)
    return SqliteStore(store.path, lock_timeout=lock_timeout)


async def read(store: StateStore, key: str, namespace: str = "default", actor: str = "a") -> object:
    async with store.transaction(namespace, actor) as tx:
        return await tx.get(key, "<missing>")


async def test_every_json_type_survives_a_committed_transaction(store: StateStore) -> None:
    values = {
        "null": None,
        "bool": True,
        "int": -(2**53),
        "float": 0.25,
        "str": "héllo ✓",
        "list": [1, "two", [3.0]],
        "obj": {"nested": {"deep": [None, False]}},
        "big": {"blob": "x" * 50_000},
    }
    async with store.transaction("default", "a") as tx:
        for key, value in values.items():
            await tx.set(key, value)
    for key, value in values.items():
        assert await read(store, key) == value


async def test_reads_inside_a_transaction_see_its_own_writes(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        await tx.set("k", "first")
    async with store.transaction("default", "a") as tx:
        assert await tx.get("k") == "first"
        await tx.set("k", "second")
        assert await tx.get("k") == "second"
        await tx.delete("k")
        assert await tx.get("k", "gone") == "gone"
        await tx.set("k", {"third": 3})
        assert await tx.get("k") == {"third": 3}
    assert await read(store, "k") == {"third": 3}


async def test_commit_applies_every_write_and_abort_applies_none(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        await tx.set("x", 1)
        await tx.set("y", 1)
    tx = store.transaction("default", "a")
    await tx.set("x", 2)
    await tx.set("y", 2)
    await tx.delete("x")
    await tx.abort()
    await tx.abort()  # idempotent
    assert (await read(store, "x"), await read(store, "y")) == (1, 1)

    tx = store.transaction("default", "a")
    await tx.set("x", 3)
    await tx.delete("y")
    await tx.set("z", 3)
    await tx.commit()
    assert (await read(store, "x"), await read(store, "y"), await read(store, "z")) == (
        3,
        "<missing>",
        3,
    )


async def test_a_failing_call_leaves_state_as_it_was(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        await tx.set("balance", 100)
    with pytest.raises(RuntimeError, match="script blew up"):
        async with store.transaction("default", "a") as tx:
            await tx.set("balance", 0)
            raise RuntimeError("script blew up")
    assert await read(store, "balance") == 100


async def test_increment_counts_from_zero_and_adds_to_stored_numbers(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        assert await tx.increment("hits") == 1
        assert await tx.increment("hits", 5) == 6
        assert await tx.get("hits") == 6
        await tx.set("ratio", 0.5)
        assert await tx.increment("ratio", 1) == 1.5
    async with store.transaction("default", "a") as tx:
        assert await tx.increment("hits", -2) == 4
    assert await read(store, "hits") == 4


async def test_script_mistakes_are_script_errors_and_write_nothing(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        await tx.set("name", "text")
        with pytest.raises(StateError) as caught:
            await tx.set("bad", float("nan"))
        assert caught.value.kind == "script_error"
        assert "set_state('bad')" in caught.value.message
        with pytest.raises(StateError) as caught:
            await tx.increment("name")
        assert caught.value.kind == "script_error"
        assert "only numbers can be incremented" in caught.value.message
        with pytest.raises(StateError) as caught:
            await tx.get(42)  # type: ignore[arg-type]
        assert caught.value.kind == "script_error"
    assert await read(store, "bad") == "<missing>"
    assert await read(store, "name") == "text"


async def test_actors_and_namespaces_do_not_share_state(store: StateStore) -> None:
    for namespace, actor in [("default", "a"), ("default", "b"), ("x.y", "a")]:
        async with store.transaction(namespace, actor) as tx:
            await tx.set("who", f"{namespace}/{actor}")
    assert await read(store, "who", "default", "a") == "default/a"
    assert await read(store, "who", "default", "b") == "default/b"
    assert await read(store, "who", "x.y", "a") == "x.y/a"


async def test_200_concurrent_read_modify_write_calls_lose_no_update(store: StateStore) -> None:
    """The seed's counter script, 200 times at once: get, yield, set."""

    async def counter_call() -> None:
        async with store.transaction("default", "test_actor") as tx:
            counter = await tx.get("counter", 0)
            await asyncio.sleep(0)  # the script does other work between get and set
            await tx.set("counter", counter + 1)

    await asyncio.gather(*(counter_call() for _ in range(200)))
    assert await read(store, "counter", actor="test_actor") == 200


async def test_a_stateless_call_takes_no_lock(store: StateStore) -> None:
    idle = store.transaction("default", "a")  # a call that never touches state
    other = twin(store, lock_timeout=0.5)
    try:
        async with other.transaction("default", "a") as tx:
            await tx.set("k", "v")
        store.lock_timeout = 0.5  # type: ignore[attr-defined]
        async with store.transaction("default", "a") as tx:
            assert await tx.get("k") == "v"
        assert not idle.touched
        await idle.commit()
    finally:
        await other.close()


async def test_waiting_for_a_held_lock_ends_in_a_clear_state_error(store: StateStore) -> None:
    holder = store.transaction("default", "busy")
    await holder.get("anything")
    assert holder.touched
    store.lock_timeout = 0.2  # type: ignore[attr-defined]
    other_process = twin(store, lock_timeout=0.2)
    try:
        for contender in (store, other_process):
            tx = contender.transaction("default", "busy")
            with pytest.raises(StateError) as caught:
                await tx.set("k", 1)
            assert caught.value.kind == "state_error"
            assert "waiting for the state lock of actor default:busy" in caught.value.message
            await tx.abort()
        # Another actor is not blocked by it.
        async with other_process.transaction("default", "free") as tx:
            await tx.set("k", 1)
        await holder.commit()
        async with other_process.transaction("default", "busy") as tx:
            await tx.set("k", 2)
    finally:
        await other_process.close()


async def test_a_cancelled_call_releases_the_lock(store: StateStore) -> None:
    entered = asyncio.Event()

    async def slow_call() -> None:
        tx = store.transaction("default", "a")
        try:
            await tx.set("k", "from the cancelled call")
            entered.set()
            await asyncio.sleep(3600)
            await tx.commit()
        finally:
            await tx.abort()

    task = asyncio.create_task(slow_call())
    await entered.wait()
    waiting = asyncio.create_task(read(store, "k"))  # queued behind the slow call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await waiting == "<missing>"


async def test_a_finished_transaction_refuses_more_state_calls(store: StateStore) -> None:
    tx = store.transaction("default", "a")
    await tx.set("k", 1)
    await tx.commit()
    await tx.commit()  # a second commit is a no-op
    with pytest.raises(StateError) as caught:
        await tx.get("k")
    assert caught.value.kind == "state_error"
    assert "finished" in caught.value.message


async def test_health_is_none_when_the_store_answers(store: StateStore) -> None:
    assert await store.health() is None


async def test_overlapping_state_calls_of_one_script_share_its_lock(store: StateStore) -> None:
    async with store.transaction("default", "a") as tx:
        await tx.set("a", 1)
        await tx.set("b", 2)
    async with store.transaction("default", "a") as tx:
        first, second = await asyncio.gather(tx.get("a"), tx.get("b"))
        await asyncio.gather(tx.set("a", first + 10), tx.set("b", second + 10))
    assert (await read(store, "a"), await read(store, "b")) == (11, 12)
