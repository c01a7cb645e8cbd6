"""Draining for a rolling restart: open WebSocket connections keep being served until
each can be closed while its client waits for nothing; no call is refused or cut.

Real in-process servers on loopback, real sandboxes, Reflow-style clients (text frames,
string ids). Reflow reconnects lazily when it saw a Close, so a connection closed right
after a reply, or after a silence, costs it no call.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import CloseCode
from websockets.protocol import State

from reflow_microsandbox.config import Config
from reflow_microsandbox.server import Server
from reflow_microsandbox.transports.ws import DRAIN_IDLE_CLOSE

from .conftest import StartServer, ws_url


def _process(actor: str, payload: dict[str, Any]) -> tuple[str, str]:
    call_id = str(uuid.uuid4())
    frame = {"jsonrpc": "2.0", "id": call_id, "method": "process",
             "params": {"actor_id": actor, "payload": payload}}
    return call_id, json.dumps(frame)


async def _reply(conn: ClientConnection, call_id: str, timeout: float = 30) -> dict[str, Any]:
    """The response to ``call_id`` (pushes before it are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await conn.recv())
            if message.get("id") == call_id:
                reply: dict[str, Any] = message
                return reply


async def _closed_with(conn: ClientConnection, timeout: float = 30) -> tuple[int | None, str]:
    """Wait for the server's Close; its code and reason."""
    async with asyncio.timeout(timeout):
        await conn.wait_closed()
    received = conn.protocol.close_rcvd
    assert received is not None, "the server did not close"
    return received.code, received.reason


async def test_a_call_running_when_the_drain_starts_is_answered_then_its_connection_closes(
    start_server: StartServer, config: Config,
) -> None:
    server = await start_server(config)
    async with connect(ws_url(server), compression=None) as conn:
        call_id, frame = _process("slow", {"seconds": 2})
        await conn.send(frame)
        started = json.loads(await conn.recv())
        assert started["params"]["port"] == "started"
        began = time.monotonic()
        stopping = asyncio.create_task(server.stop())
        reply = await _reply(conn, call_id)
        assert reply["result"] == {"outputs": {"slept": 2}}
        assert await _closed_with(conn) == (CloseCode.GOING_AWAY, "server draining: reconnect")
    await stopping
    # Done when the last connection closed, not at drain_timeout (15 s here).
    assert time.monotonic() - began < config.server.drain_timeout / 2


async def test_a_call_sent_during_the_drain_on_an_open_connection_is_served_not_refused(
    start_server: StartServer, config: Config,
) -> None:
    server = await start_server(config)
    async with connect(ws_url(server), compression=None) as busy, \
            connect(ws_url(server), compression=None) as steady:
        # One call keeps the drain going; the other connection is between two calls.
        slow_id, slow = _process("slow", {"seconds": 2})
        await busy.send(slow)
        assert json.loads(await busy.recv())["params"]["port"] == "started"
        first_id, first = _process("echo", {"data": 1})
        await steady.send(first)
        assert (await _reply(steady, first_id))["result"] == {"outputs": {"out": 1}}

        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0)  # the drain has begun: the listener is closed
        with pytest.raises((OSError, InvalidHandshake)):
            async with connect(ws_url(server), open_timeout=5):
                pass
        # Within the silence allowed, the next call of the open connection is served.
        second_id, second = _process("echo", {"data": 2})
        await steady.send(second)
        reply = await _reply(steady, second_id)
        assert "error" not in reply and reply["result"] == {"outputs": {"out": 2}}
        assert (await _closed_with(steady))[0] == CloseCode.GOING_AWAY
        assert (await _reply(busy, slow_id))["result"] == {"outputs": {"slept": 2}}
        assert (await _closed_with(busy))[0] == CloseCode.GOING_AWAY
    await stopping


async def test_a_silent_connection_is_closed_after_the_idle_limit_and_the_drain_ends_early(
    start_server: StartServer, config: Config,
) -> None:
    server = await start_server(config)
    async with connect(ws_url(server), compression=None) as conn:
        call_id, frame = _process("echo", {"data": "x"})
        await conn.send(frame)
        await _reply(conn, call_id)
        began = time.monotonic()
        await server.stop()
        elapsed = time.monotonic() - began
        code, _ = await _closed_with(conn, timeout=5)
    assert code == CloseCode.GOING_AWAY
    assert elapsed < DRAIN_IDLE_CLOSE + 5  # not the 15 s drain_timeout


async def test_a_reflow_style_client_moves_to_the_next_server_without_losing_a_call(
    start_server: StartServer, config: Config,
) -> None:
    """Reflow's lazy reconnect against a drained server: every call gets its answer.

    The client is paced like an actor loop (a short pause between a reply and the next
    call) and dials the other server when it saw a Close, as a balancer would route it.
    """
    old: Server = await start_server(config)
    new: Server = await start_server(config)
    urls = [ws_url(old), ws_url(new)]
    answered: list[int] = []
    errors: list[dict[str, Any]] = []
    conn = await connect(urls[0], compression=None)
    stopping: asyncio.Task[None] | None = None
    try:
        for n in range(40):
            if conn.protocol.close_rcvd is not None or conn.state is not State.OPEN:
                conn = await connect(urls[1], compression=None)  # Reflow redials lazily
            call_id, frame = _process("echo", {"data": n})
            try:
                await conn.send(frame)
                reply = await _reply(conn, call_id, timeout=10)
            except ConnectionClosed:
                pytest.fail(f"call {n} was lost: the connection closed under it")
            if "error" in reply:
                errors.append(reply["error"])
            else:
                answered.append(reply["result"]["outputs"]["out"])
            if n == 10:
                stopping = asyncio.create_task(old.stop())
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert stopping is not None
    await stopping
    assert errors == []
    assert answered == list(range(40))
    assert conn.remote_address[1] == new.ws_port  # it did move
