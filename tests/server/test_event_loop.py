"""The in-process server tests run on the event loop ``serve`` uses (uvloop)."""

from __future__ import annotations

import asyncio

import uvloop

from reflow_microsandbox.server import Server

from .clients import ReflowClient
from .conftest import ws_url


async def test_the_server_tests_run_on_uvloop_as_serve_does(server: Server) -> None:
    # control/cli.py runs the server with asyncio.Runner(loop_factory=uvloop.new_event_loop);
    # a bug only uvloop shows (it refused umask= in a subprocess call) shipped when the
    # tests ran on asyncio's default loop.
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("echo", {"data": 7})
    assert reply.error is None, reply.raw
    assert reply.outputs == {"out": 7}
