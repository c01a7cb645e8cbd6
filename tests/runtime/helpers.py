"""Helpers of the sandbox runtime tests: a dict-backed state, an event recorder, actors.

The state handler and event sink here are the real interfaces of
``sandbox.base`` implemented over a dict and a list, not mocks of a service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflow_microsandbox.errors import StateError
from reflow_microsandbox.sandbox.base import Backend, Sandbox
from reflow_microsandbox.vocabulary import JSON, ActorSource, CallContext, Language

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Wall-clock limits are multiplied by this where everything runs slower for a known reason:
# tests/vm runs these tests in Debian 12 under qemu's software emulation and sets it there.
TIME_SCALE = float(os.environ.get("REFLOW_TEST_TIME_SCALE", "1"))

# Small limits keep every test quick: 64 MiB, 2 s per call, 256 KiB of output.
TEST_SETTINGS = {
    "memory_mb": 64,
    "call_timeout": 2.0 * TIME_SCALE,
    "start_timeout": 20.0 * TIME_SCALE,
    "max_processes": 16,
    "max_output_bytes": 256 * 1024,
    "tmp_size_mb": 8,
}


class DictState:
    """A StateHandler backed by a dict: the real interface, with the simplest store."""

    def __init__(self) -> None:
        self.values: dict[str, JSON] = {}

    async def get(self, key: str, default: JSON = None) -> JSON:
        return self.values.get(key, default)

    async def set(self, key: str, value: JSON) -> None:
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        value = self.values.get(key, 0)
        assert isinstance(value, int | float)
        self.values[key] = value + by
        return value + by


class FailingState(DictState):
    """A store that is down: every request fails the way the Redis store reports it."""

    async def get(self, key: str, default: JSON = None) -> JSON:
        raise StateError("the state store is unreachable")

    async def set(self, key: str, value: JSON) -> None:
        raise StateError("the state store is unreachable")


@dataclass
class Events:
    """An EventSink that records what a call streamed, in order."""

    items: list[tuple[str, str, Any]] = field(default_factory=list)

    async def output(self, port: str, data: JSON) -> None:
        self.items.append(("output", port, data))

    async def log(self, level: str, message: str) -> None:
        self.items.append(("log", level, message))

    @property
    def logs(self) -> list[str]:
        return [message for kind, _, message in self.items if kind == "log"]

    @property
    def outputs(self) -> list[tuple[str, Any]]:
        return [(port, data) for kind, port, data in self.items if kind == "output"]


def actor_source(source: str, language: Language = "python", name: str = "t") -> ActorSource:
    filename = f"{name}.py" if language == "python" else f"{name}.js"
    return ActorSource(
        name=name, namespace="tests", language=language, source=source, filename=filename
    )


async def loaded(backend: Backend, source: str, language: Language = "python") -> Sandbox:
    sandbox = await backend.spawn(language)
    await sandbox.load(actor_source(source, language))
    return sandbox


async def call(
    sandbox: Sandbox,
    payload: dict[str, JSON] | None = None,
    *,
    state: DictState | None = None,
    events: Events | None = None,
    timeout: float = 2.0,
) -> dict[str, JSON]:
    context = CallContext(actor_id="t", namespace="tests", payload=payload or {}, timestamp=1)
    return await sandbox.call(
        context, state or DictState(), events or Events(), timeout=timeout * TIME_SCALE
    )


ECHO = """
@actor
def process(context):
    return {"echo": context.get_input("x")}
"""


async def assert_serves(backend: Backend) -> None:
    """The backend still starts a sandbox that answers a call correctly."""
    sandbox = await loaded(backend, ECHO)
    try:
        assert await call(sandbox, {"x": 41}) == {"echo": 41}
    finally:
        await sandbox.close()


def processes_of_uids(uids: set[int]) -> list[int]:
    """Live processes (not zombies) whose real uid is one of ``uids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        if uid in uids and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found
