"""Concurrent calls: no lost updates (one process and two), concurrency per connection,
call order per actor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis

from reflow_microsandbox.server import Server

from .clients import RawClient
from .conftest import ServerProcess, StartServer, config_data, make_config, ws_url


async def fire(url: str, count: int, actor: str = "test_actor", tag: str = "") -> list[dict]:
    """Send ``count`` process frames at once on one connection; every response, in any order."""
    client = await RawClient.open(url)
    try:
        for i in range(count):
            await client.send(
                {"jsonrpc": "2.0", "id": f"{tag}{i}", "method": "process",
                 "params": {"actor_id": actor}}
            )  # fmt: skip
        responses = []
        while len(responses) < count:
            message = await client.recv(timeout=120)
            if "id" in message:
                responses.append(message)
        return responses
    finally:
        await client.close()


async def test_200_concurrent_counter_calls_over_websocket_lose_no_update(
    server: Server, redis_url: str
) -> None:
    batches = await asyncio.gather(*(fire(ws_url(server), 20, tag=f"c{c}-") for c in range(10)))
    responses = [r for batch in batches for r in batch]
    assert len(responses) == 200
    errors = [r["error"] for r in responses if "error" in r]
    assert errors == []
    seen = sorted(r["result"]["outputs"]["counter"] for r in responses)
    assert seen == list(range(200))
    redis = aioredis.from_url(redis_url)
    try:
        assert await redis.get("default:test_actor:counter") == b"200"
    finally:
        await redis.aclose()


async def test_two_server_processes_sharing_one_redis_count_exactly(
    scripts: Path, tmp_path: Path, redis_url: str, server_processes: list[ServerProcess]
) -> None:
    data = config_data(scripts, tmp_path, redis_url)
    first = ServerProcess(data, tmp_path / "one").start()
    second = ServerProcess(data, tmp_path / "two").start()
    server_processes += [first, second]
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    batches = await asyncio.gather(
        *(fire(p.ws_url, 25, tag=f"{p.ws_port}-{c}-") for p in (first, second) for c in range(4))
    )
    responses = [r for batch in batches for r in batch]
    assert [r for r in responses if "error" in r] == []
    assert sorted(r["result"]["outputs"]["counter"] for r in responses) == list(range(200))
    redis = aioredis.from_url(redis_url)
    try:
        assert await redis.get("default:test_actor:counter") == b"200"
    finally:
        await redis.aclose()
    for process in (first, second):
        process.terminate()
        assert process.wait() == 0, process.log


async def test_calls_on_one_connection_run_concurrently(server: Server) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(
            {"jsonrpc": "2.0", "id": "slow", "method": "process",
             "params": {"actor_id": "slow", "payload": {"seconds": 2}}}
        )  # fmt: skip
        started = await client.recv()
        assert started["method"] == "output" and started["params"]["port"] == "started"
        await client.send(
            {"jsonrpc": "2.0", "id": "fast", "method": "process",
             "params": {"actor_id": "echo", "payload": {"data": "quick"}}}
        )  # fmt: skip
        first = await client.recv()
        second = await client.recv()
    finally:
        await client.close()
    # The fast call, sent while the slow one ran, was answered first.
    assert first["id"] == "fast" and first["result"] == {"outputs": {"out": "quick"}}
    assert second["id"] == "slow" and second["result"] == {"outputs": {"slept": 2}}


async def test_calls_to_one_actor_start_in_the_order_they_were_sent(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    # One sandbox per actor: start order is then also run order, visible in its state.
    config = make_config(scripts, tmp_path, redis_url, sandbox={"pool": {"max_per_actor": 1}})
    server = await start_server(config)
    client = await RawClient.open(ws_url(server))
    try:
        for n in range(30):
            await client.send(
                json.dumps({"jsonrpc": "2.0", "id": n, "method": "process",
                            "params": {"actor_id": "sequence", "payload": {"n": n}}})
            )  # fmt: skip
        answers = [await client.recv(timeout=60) for _ in range(30)]
    finally:
        await client.close()
    assert [a["id"] for a in answers] == list(range(30))
    tx = server.store.transaction("default", "sequence")
    try:
        assert await tx.get("seen") == list(range(30))
    finally:
        await tx.abort()
