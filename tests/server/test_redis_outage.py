"""Redis stopped and restarted under calls: clear errors, stateless calls unaffected,
recovery without a restart, /ready says what is wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.redis_server import RedisServer

from .clients import ReflowClient
from .conftest import StartServer, http_url, make_config, ws_url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer(persist=True) as redis:
        yield redis


async def ready(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_redis_outage_fails_state_calls_clearly_and_recovers_by_itself(
    start_server: StartServer, scripts: Path, tmp_path: Path, own_redis: RedisServer
) -> None:
    server = await start_server(make_config(scripts, tmp_path, own_redis.url))
    async with ReflowClient(ws_url(server)) as client:
        assert (await client.process("test_actor")).outputs == {"status": "success", "counter": 0}

        # Calls keep coming while Redis goes away.
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def keep_calling() -> None:
            async with ReflowClient(ws_url(server)) as caller:
                while not stop.is_set():
                    reply = await caller.process("test_actor")
                    outcomes.append("ok" if reply.error is None else reply.error["data"]["kind"])

        background = asyncio.create_task(keep_calling())
        # Redis goes away once the background caller is being served (bounded wait).
        deadline = time.monotonic() + 30
        while "ok" not in outcomes:
            assert time.monotonic() < deadline and not background.done(), outcomes
            await asyncio.sleep(0.01)
        own_redis.stop()

        failed = await client.process("test_actor")
        assert failed.error is not None
        assert failed.error["data"]["kind"] == "state_error"
        assert "redis" in failed.error["message"].lower()

        # A stateless actor does not care.
        assert (await client.process("echo", {"data": "no state"})).outputs == {"out": "no state"}

        status, body = await ready(http_url(server, "/ready"))
        assert status == 503
        assert body["ready"] is False
        assert any(
            "state store" in reason and "redis" in reason.lower() for reason in body["reasons"]
        )

        own_redis.start()
        # The server reconnects by itself (bounded wait, no restart).
        deadline = time.monotonic() + 30
        recovered = None
        while time.monotonic() < deadline:
            recovered = await client.process("test_actor")
            if recovered.error is None:
                break
            await asyncio.sleep(0.2)
        assert recovered is not None and recovered.error is None, recovered.error
        status, body = await ready(http_url(server, "/ready"))
        assert status == 200, body

        stop.set()
        await background
    # Every call under the outage either worked or failed as a state error: nothing else.
    assert set(outcomes) <= {"ok", "state_error"}, outcomes
    assert "state_error" in outcomes
