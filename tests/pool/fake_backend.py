"""A backend in memory, for fast pool scheduling tests (a fast extra layer: the pool's
tests over real bubblewrap stay, in test_pool.py, test_fairness.py and test_warming.py).

Each :class:`FakeSandbox` drives the real, pure :class:`RunnerProtocol` on the pool's
side; the runner side is a few lines here that answer each frame at once, so loads,
calls, script errors, crashes and timeouts take the same path through the protocol as
with a real runner. What a call does is read from its payload:

- ``{"gate": name}``: wait until the test opens the gate (``backend.gate(name).set()``);
  the call's ``timeout`` applies while it waits (the sandbox is then abandoned, as the
  runner client does);
- ``{"raise": message}``: the script raises (``script_error``; the sandbox stays);
- ``{"crash": True}``: the runner dies mid-call (``crashed``; the sandbox is gone).

A call's outputs name the sandbox that ran it and its call count there, so tests see
which sandbox served which call. A script whose source starts with ``fail`` does not
load (``load_error``). The backend records every sandbox, fails the next
``spawn_failures`` starts, and checks on every start that a language never has more
live sandboxes than ``max_live`` allows (the pool's hard cap).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend, Sandbox
from reflow_microsandbox.sandbox.enforced import EnforcedLimit
from reflow_microsandbox.sandbox.runner_protocol import (
    CallEnding,
    Finished,
    RunnerProtocol,
)
from reflow_microsandbox.vocabulary import (
    JSON,
    ActorSource,
    CallContext,
    EventSink,
    Language,
    StateHandler,
)

_HEADER = struct.Struct(">I")
_pids = itertools.count(100)


def _frame(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return _HEADER.pack(len(body)) + body


def _sent(data: bytes) -> list[dict[str, Any]]:
    """The frames the protocol wrote to the runner."""
    messages = []
    while data:
        (size,) = _HEADER.unpack_from(data)
        messages.append(json.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return messages


class FakeSandbox(Sandbox):
    """One in-memory sandbox: the real runner protocol, a runner that answers at once."""

    def __init__(self, backend: FakeBackend, language: Language, package_dirs: Sequence[str]):
        self.language = language
        self.sandbox_id = f"fake-{language}-{next(backend.ids)}"
        self.package_dirs = tuple(package_dirs)
        self.actor: ActorSource | None = None
        self.calls = 0
        self.closed = False
        self._killed = asyncio.Event()
        self._backend = backend
        self._protocol = RunnerProtocol(10_000, f"fake sandbox {self.sandbox_id}")
        self._protocol.receive_data(
            _frame({"type": "ready", "language": language, "pid": next(_pids)})
        )
        [ready] = self._protocol.events_received()
        assert isinstance(ready, Finished) and ready.error is None

    @property
    def alive(self) -> bool:
        return not self.closed and self._protocol.usable

    async def load(self, actor: ActorSource) -> Mapping[str, JSON]:
        self._protocol.send_load(actor)
        [load] = _sent(self._protocol.data_to_send())
        assert load["type"] == "load" and self.actor is None, "a sandbox is loaded once"
        self.actor = actor
        if load["source"].startswith("fail"):
            reply = {"type": "error", "call": None, "kind": "load_error",
                     "error_type": "SyntaxError", "message": "invalid syntax"}
        else:
            reply = {"type": "loaded", "metadata": {"component": actor.name}}
        self._protocol.receive_data(_frame(reply))
        return await self._finished()

    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        call_id = self._protocol.send_call(context)
        [call] = _sent(self._protocol.data_to_send())
        payload = call["context"]["payload"]
        self.calls += 1
        self._backend.running += 1
        try:
            if "gate" in payload:
                try:
                    async with asyncio.timeout(timeout):
                        await self._wait_for(self._backend.gate(payload["gate"]))
                except TimeoutError:
                    error = self._protocol.abandon("timeout", f"the call ran past {timeout:g} s")
                    await self.close()
                    raise error from None
        finally:
            self._backend.running -= 1
        if self.closed:  # killed while the call ran (the pool closing, for one)
            self._protocol.receive_eof(SandboxError("crashed", "the sandbox was closed"))
        elif payload.get("crash"):
            self._protocol.receive_eof(SandboxError("crashed", "the runner was killed"))
        elif "raise" in payload:
            self._protocol.receive_data(_frame(
                {"type": "error", "call": call_id, "kind": "script_error",
                 "error_type": "ValueError", "message": payload["raise"]}
            ))
        else:
            outputs = {"sandbox": self.sandbox_id, "calls": self.calls}
            self._protocol.receive_data(
                _frame({"type": "result", "call": call_id, "outputs": outputs})
            )
        return dict(await self._finished())

    async def _wait_for(self, gate: asyncio.Event) -> None:
        """Until ``gate`` opens or the sandbox is closed (a real close kills the runner)."""
        waits = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(self._killed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _finished(self) -> Any:
        events = self._protocol.events_received()
        if events and isinstance(events[-1], CallEnding):
            self._protocol.finish_call()
            events += self._protocol.events_received()
        finished = events[-1]
        assert isinstance(finished, Finished), events
        if finished.error is not None:
            if finished.error.destroys_sandbox:
                await self.close()
            raise finished.error
        return finished.value

    def memory_usage(self) -> int | None:
        return None if self.closed else 1 << 20

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._killed.set()
            self._backend.live[self.language] -= 1


class FakeBackend(Backend):
    """Starts :class:`FakeSandbox` es; see the module docstring."""

    name = "fake"

    def __init__(self, max_live: Mapping[Language, int]) -> None:
        self.max_live = dict(max_live)
        self.ids = itertools.count(1)
        self.sandboxes: list[FakeSandbox] = []
        self.live: dict[Language, int] = {"python": 0, "nodejs": 0}
        self.spawn_failures = 0
        self.spawns = 0
        self.starting = 0
        self.most_at_once = 0
        self.running = 0
        self.over_cap: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        """The gate calls with ``{"gate": name}`` wait for."""
        return self._gates.setdefault(name, asyncio.Event())

    async def start(self) -> None:
        pass

    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> Sandbox:
        self.spawns += 1
        self.starting += 1
        self.most_at_once = max(self.most_at_once, self.starting)
        try:
            await asyncio.sleep(0)  # a start takes a turn of the loop, as a real one does
        finally:
            self.starting -= 1
        if self.spawn_failures > 0:
            self.spawn_failures -= 1
            raise SandboxError("unavailable", f"{language} sandbox did not start (injected)")
        if self.live[language] >= self.max_live[language]:
            self.over_cap.append(f"{language}: {self.live[language] + 1} live")
        self.live[language] += 1
        sandbox = FakeSandbox(self, language, package_dirs)
        self.sandboxes.append(sandbox)
        return sandbox

    def enforced_limits(self) -> list[EnforcedLimit]:
        return []

    async def close(self) -> None:
        for sandbox in self.sandboxes:
            await sandbox.close()

    def served(self) -> dict[str, str]:
        """sandbox id -> the key of the actor it was loaded with (loaded ones only)."""
        return {s.sandbox_id: s.actor.key for s in self.sandboxes if s.actor is not None}
