"""The Redis store against a real redis-server: wire format, processes, outages, auth."""

from __future__ import annotations

import asyncio

import pytest
import redis
import zstandard

from reflow_microsandbox.config import parse_config
from reflow_microsandbox.errors import StateError
from reflow_microsandbox.state import RedisStore, SqliteStore, open_store
from reflow_microsandbox.state.codec import lock_key
from tests.redis_server import RedisServer
from tests.state.processes import run_counter_processes


def plain_client(server: RedisServer) -> redis.Redis:
    """What Reflow's own state code (or redis-cli) sees: a plain, separate client."""
    return redis.Redis.from_url(server.url)


async def test_small_values_are_plain_json_that_reflow_reads_and_big_ones_zstd(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    async with redis_store.transaction("flows.demo", "test_actor") as tx:
        await tx.set("config", {"mode": "fast", "n": [1, 2]})
        await tx.set("big", "x" * 10_000)
        await tx.increment("counter")
        await tx.increment("counter", 41)
    raw = plain_client(redis_server)
    assert raw.get("flows.demo:test_actor:config") == b'{"mode":"fast","n":[1,2]}'
    assert raw.get("flows.demo:test_actor:counter") == b"42"
    big = raw.get("flows.demo:test_actor:big")
    assert isinstance(big, bytes)
    assert big.startswith(b"\x28\xb5\x2f\xfd") and len(big) < 200
    assert zstandard.ZstdDecompressor().decompress(big) == b'"' + b"x" * 10_000 + b'"'
    # Reflow's native counters use INCRBY on the same key: it still works.
    assert raw.incrby("flows.demo:test_actor:counter", 8) == 50
    assert raw.keys("microsandbox:lock:*") == []  # no lock left behind


async def test_values_written_by_reflow_itself_are_read(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    raw = plain_client(redis_server)
    raw.set("default:native:settings", '{"threshold": 0.5}')
    raw.incrby("default:native:events", 3)
    async with redis_store.transaction("default", "native") as tx:
        assert await tx.get("settings") == {"threshold": 0.5}
        assert await tx.increment("events") == 4


async def test_compression_threshold_zero_stores_everything_plain(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, compression_threshold=0)
    try:
        async with store.transaction("default", "a") as tx:
            await tx.set("big", "y" * 5000)
        assert plain_client(redis_server).get("default:a:big") == b'"' + b"y" * 5000 + b'"'
    finally:
        await store.close()


async def test_two_processes_on_one_redis_lose_no_update(redis_server: RedisServer) -> None:
    """Two real processes, each with its own pool, 100 concurrent counter calls each."""
    await asyncio.to_thread(run_counter_processes, "redis", redis_server.url, 2, 100)
    assert plain_client(redis_server).get("default:test_actor:counter") == b"200"


async def test_more_concurrent_actors_than_pooled_connections_all_succeed(
    redis_server: RedisServer,
) -> None:
    # What is asserted is queueing for a connection, not the wait's bound: a generous
    # socket timeout keeps a busy machine (300 waiters on 4 connections) from turning the
    # wait into a state_error, which the outage tests below cover on purpose.
    store = RedisStore(redis_server.url, max_connections=4, socket_timeout=30.0)
    try:

        async def call(actor: int) -> None:
            async with store.transaction("default", f"actor{actor}") as tx:
                await tx.set("k", await tx.get("k", actor) + 1)

        await asyncio.gather(*(call(i) for i in range(300)))
        raw = plain_client(redis_server)
        assert [raw.get(f"default:actor{i}:k") for i in (0, 299)] == [b"1", b"300"]
    finally:
        await store.close()


async def test_redis_down_gives_a_clear_state_error_and_recovers_by_itself(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    async with redis_store.transaction("default", "a") as tx:
        await tx.set("counter", 1)
    where = f"redis at 127.0.0.1:{redis_server.port}"
    assert redis_store.name == where

    redis_server.stop()
    tx = redis_store.transaction("default", "a")
    with pytest.raises(StateError) as caught:
        await tx.get("counter")
    await tx.abort()
    assert caught.value.kind == "state_error"
    assert where in caught.value.message
    assert "Connection refused" in caught.value.message
    health = await redis_store.health()
    assert health is not None and health.startswith(f"{where} unreachable")
    # A stateless call never notices.
    stateless = redis_store.transaction("default", "a")
    await stateless.commit()
    assert not stateless.touched

    redis_server.start()  # same port, empty (nothing persisted), scripts flushed
    assert await redis_store.health() is None
    async with redis_store.transaction("default", "a") as tx:
        assert await tx.increment("counter") == 1
    assert plain_client(redis_server).get("default:a:counter") == b"1"


async def test_a_restart_with_pooled_connections_open_is_invisible_to_the_next_call() -> None:
    with RedisServer(persist=True) as server:
        store = RedisStore(server.url)
        try:
            async with store.transaction("default", "a") as tx:
                await tx.set("n", 1)
            server.restart()  # the pool still holds connections to the old process
            async with store.transaction("default", "a") as tx:
                assert await tx.get("n") == 1
                await tx.set("n", 2)
            assert plain_client(server).get("default:a:n") == b"2"
        finally:
            await store.close()


async def test_password_from_the_url_is_used_and_a_wrong_one_is_reported() -> None:
    with RedisServer(password="s3cret-pass") as server:
        good = RedisStore(server.url)
        bad = RedisStore(server.url.replace("s3cret-pass", "guessed-pass"))
        try:
            assert await good.health() is None
            async with good.transaction("default", "a") as tx:
                await tx.set("k", "v")
            problem = await bad.health()
            assert problem is not None
            assert problem.startswith(f"redis at 127.0.0.1:{server.port} refused the credentials")
            tx = bad.transaction("default", "a")
            with pytest.raises(StateError) as caught:
                await tx.get("k")
            await tx.abort()
            assert caught.value.kind == "state_error"
            for text in (problem, caught.value.message):
                assert "s3cret-pass" not in text and "guessed-pass" not in text
        finally:
            await good.close()
            await bad.close()


async def test_a_held_lock_is_kept_alive_past_its_lease(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, lock_ttl=0.3)
    other = RedisStore(redis_server.url, lock_timeout=0.5)
    try:
        holder = store.transaction("default", "slow")
        await holder.set("k", "holder")
        await asyncio.sleep(1.0)  # more than three leases
        contender = other.transaction("default", "slow")
        with pytest.raises(StateError, match="waiting for the state lock"):
            await contender.get("k")
        await contender.abort()
        await holder.commit()
        async with other.transaction("default", "slow") as tx:
            assert await tx.get("k") == "holder"
    finally:
        await store.close()
        await other.close()


async def test_a_holder_that_lost_its_lock_cannot_commit(redis_server: RedisServer) -> None:
    """The lease running out under a stalled holder is produced by deleting the lock key
    (a paused process cannot be produced in-process); the late commit must not apply."""
    store = RedisStore(redis_server.url)
    other = RedisStore(redis_server.url)
    try:
        stalled = store.transaction("default", "a")
        await stalled.set("k", "stale write")
        plain_client(redis_server).delete(lock_key("default", "a"))
        async with other.transaction("default", "a") as tx:
            await tx.set("k", "newer write")
        with pytest.raises(StateError) as caught:
            await stalled.commit()
        assert caught.value.kind == "state_error"
        assert "lost the state lock of actor default:a" in caught.value.message
        assert plain_client(redis_server).get("default:a:k") == b'"newer write"'
    finally:
        await store.close()
        await other.close()


async def test_unreadable_stored_value_is_a_state_error_naming_the_key(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    plain_client(redis_server).set("default:a:junk", b"\x28\xb5\x2f\xfd garbage")
    tx = redis_store.transaction("default", "a")
    with pytest.raises(StateError) as caught:
        await tx.get("junk")
    await tx.abort()
    assert caught.value.kind == "state_error"
    assert "default:a:junk" in caught.value.message


async def test_open_never_raises_when_redis_is_down() -> None:
    server = RedisServer().start()
    url = server.url
    server.close()
    store = RedisStore(url)
    try:
        await store.open()
        assert "unreachable" in (await store.health() or "")
    finally:
        await store.close()


def test_open_store_picks_redis_when_a_url_is_configured(tmp_path: object) -> None:
    config = parse_config({"redis": {"url": "redis://127.0.0.1:6399/2"}})
    store = open_store(config)
    assert isinstance(store, RedisStore)
    assert store.name == "redis at 127.0.0.1:6399/2"
    assert isinstance(open_store(parse_config({})), SqliteStore)
    with pytest.raises(ValueError, match=r"redis\.url"):
        open_store(parse_config({"redis": {"url": "http://nope"}}))
