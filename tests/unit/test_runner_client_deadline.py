"""The call time limit of :class:`RunnerClient` (one timer per runner, not one per call),
and a call sent ahead by ``start_call`` (what the pool does as it hands a sandbox over).

The other end of the socket pair is a scripted runner written here (a fake, on
purpose: it answers or stays silent exactly when the test says, which a real runner
cannot be made to do to the millisecond). The real runners' time limits are tested
through both backends in ``tests/runtime/test_limits.py`` and the server tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.frames import FrameDecoder, encode_frame
from reflow_microsandbox.sandbox.runner_client import RunnerClient
from reflow_microsandbox.vocabulary import ActorSource, CallContext
from tests.null_handlers import NoEvents, NoState

ACTOR = ActorSource("a", "ns", "python", "def process(context): pass")


class ScriptedRunner:
    """Answers ``call`` frames whose payload has ``"answer": true``; ignores the rest."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, encode_frame({"type": "ready", "language": "python"}))
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                return
            for message in self.decoder.messages(data):
                if message["type"] == "load":
                    reply = {"type": "loaded", "metadata": {}}
                elif message["context"]["payload"].get("answer"):
                    reply = {"type": "result", "call": message["call"], "outputs": {"ok": 1}}
                else:
                    continue
                await loop.sock_sendall(self.sock, encode_frame(reply))


@pytest.fixture
async def client() -> AsyncIterator[RunnerClient]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    runner = asyncio.create_task(ScriptedRunner(theirs).serve())
    client = RunnerClient(max_output_bytes=1 << 20)
    await asyncio.get_running_loop().create_unix_connection(lambda: client, sock=ours)
    await client.wait_ready(5)
    await client.load(ACTOR, 5)
    try:
        yield client
    finally:
        client.close_transport()
        theirs.close()
        runner.cancel()


async def call(client: RunnerClient, answer: bool, timeout: float) -> dict[str, Any]:
    context = CallContext("a", "ns", payload={"answer": answer})
    return await client.call(context, NoState(), NoEvents(), timeout=timeout)


async def test_a_short_limit_after_long_ones_still_times_out_on_time(
    client: RunnerClient,
) -> None:
    for _ in range(3):  # calls with a long limit leave the runner's timer far ahead
        assert await call(client, answer=True, timeout=60) == {"ok": 1}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SandboxError) as caught:
        await call(client, answer=False, timeout=0.2)
    assert caught.value.kind == "timeout"
    assert "0.2 s" in caught.value.message
    assert loop.time() - started >= 0.2
    assert client.broken  # a timed-out runner is not reused


async def test_a_long_limit_after_a_short_one_is_not_cut_by_the_earlier_timer(
    client: RunnerClient,
) -> None:
    assert await call(client, answer=True, timeout=0.3) == {"ok": 1}
    # The runner's timer is still armed for the first call's deadline (0.3 s): it must
    # re-arm for this call's own, not time it out.
    waiting = asyncio.create_task(call(client, answer=False, timeout=30))
    await asyncio.sleep(0.6)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting  # a cancellation from outside stays a cancellation


async def test_the_timer_rests_between_calls_and_an_idle_runner_is_not_harmed(
    client: RunnerClient,
) -> None:
    assert await call(client, answer=True, timeout=0.1) == {"ok": 1}
    await asyncio.sleep(0.3)  # the timer fires with no call running
    assert not client.broken
    assert await call(client, answer=True, timeout=5) == {"ok": 1}


async def test_a_call_started_ahead_is_answered_to_the_call_that_awaits_it(
    client: RunnerClient,
) -> None:
    """The pool sends a waiting call's frame as it hands the sandbox over
    (``start_call``); the call's own ``call()`` then waits for that answer."""
    context = CallContext("a", "ns", payload={"answer": True})
    assert client.start_call(context, NoEvents())
    assert not client.start_call(CallContext("a", "ns"), NoEvents())  # one at a time
    await asyncio.sleep(0.05)  # the answer may well arrive before call() is awaited
    assert await client.call(context, NoState(), NoEvents(), timeout=5) == {"ok": 1}
    assert await call(client, answer=True, timeout=5) == {"ok": 1}  # and it goes on


async def test_a_call_started_ahead_keeps_its_time_limit(client: RunnerClient) -> None:
    context = CallContext("a", "ns", payload={"answer": False})
    assert client.start_call(context, NoEvents())
    with pytest.raises(SandboxError) as caught:
        await client.call(context, NoState(), NoEvents(), timeout=0.2)
    assert caught.value.kind == "timeout"
