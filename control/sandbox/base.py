"""The sandbox backend interface: what the pool needs from bubblewrap and Docker alike.

A :class:`Sandbox` is one long-lived runner process (Python or Node.js) inside an
isolation boundary. It is loaded with exactly one actor, then called many times.
While a call runs, the runner may stream events (outputs, logs) and ask for state;
both go through the objects the caller passes in, so the sandbox layer knows
nothing of WebSockets or Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..config import Language
from .enforced import EnforcedLimit

JSON = Any
"""A value that survives strict JSON (no NaN/Infinity)."""

ErrorKind = Literal[
    "timeout",  # the call ran past its wall-clock limit
    "memory",  # the sandbox hit its memory limit
    "crashed",  # the runner died (signal, fork bomb, killed, protocol broken)
    "output_too_large",  # the call's outputs, pushes or logs went past the cap
    "script_error",  # the script raised, or returned something that is not strict JSON
    "load_error",  # the script could not be loaded (syntax error, no process function)
    "pool_exhausted",  # no sandbox could be had within the acquire timeout
    "state_error",  # the state store failed or refused a request
    "unavailable",  # the backend cannot start sandboxes (engine down, image missing)
]


class SandboxError(Exception):
    """A call or start failed; ``kind`` says which limit or failure it was."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        details: Mapping[str, JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.details: dict[str, JSON] = dict(details or {})

    @property
    def destroys_sandbox(self) -> bool:
        """Whether the sandbox that raised this must be thrown away."""
        return self.kind not in ("script_error", "state_error", "pool_exhausted")


@dataclass(frozen=True)
class ActorSource:
    """A script to load: the actor's identity and its code."""

    name: str
    namespace: str
    language: Language
    source: str
    filename: str = "<actor>"
    package_dirs: tuple[str, ...] = ()
    """Host folders of this actor's own dependencies, mounted read-only into its
    sandboxes (on top of ``sandbox.package_dirs``); its sandboxes are started for it."""

    @property
    def key(self) -> str:
        """The identity the pool binds sandboxes to."""
        return f"{self.namespace}:{self.name}"


@dataclass(frozen=True)
class CallContext:
    """What a script sees as ``context`` (besides the methods)."""

    actor_id: str
    namespace: str
    payload: Mapping[str, JSON] = field(default_factory=dict)
    config: Mapping[str, JSON] = field(default_factory=dict)
    timestamp: int = 0


class StateHandler(Protocol):
    """Answers the state requests a running script makes (keys are the script's own)."""

    async def get(self, key: str, default: JSON = None) -> JSON: ...

    async def set(self, key: str, value: JSON) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def increment(self, key: str, by: int | float = 1) -> int | float: ...


class EventSink(Protocol):
    """Receives what a running script streams, in order, as it happens."""

    async def output(self, port: str, data: JSON) -> None: ...

    async def log(self, level: str, message: str) -> None: ...


class Sandbox(abc.ABC):
    """One runner inside one isolation boundary."""

    language: Language
    sandbox_id: str

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the runner has exited or was killed, or must not serve another call."""

    @property
    def retire_reason(self) -> str | None:
        """Why the sandbox may not serve another call (None while :attr:`alive`): for
        example an uncaught exception outside a call, or a call that left processes."""
        return None if self.alive else "crashed"

    def take_stray_frames(self) -> int:
        """Frames dropped because they arrived outside their call, since the last take."""
        return 0

    def set_cpu_share(self, share: float) -> None:
        """Weigh this sandbox's CPU time against the other sandboxes' (``share`` in (0, 1]:
        1 is a whole actor's weight). The pool gives an actor with ``k`` sandboxes
        ``1/k`` each, so one actor flooding the node gets, in all, the CPU weight of one
        sandbox under contention. A no-op where the backend has no such weight."""
        return None

    @abc.abstractmethod
    async def load(self, actor: ActorSource) -> Mapping[str, JSON]:
        """Load the actor's script; returns its metadata. Raises :class:`SandboxError`."""

    @abc.abstractmethod
    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        """Run the loaded actor once; returns its outputs (port -> value).

        Raises :class:`SandboxError`; when ``error.destroys_sandbox`` the sandbox is
        already dead or must be closed by the caller.
        """

    @abc.abstractmethod
    def memory_usage(self) -> int | None:
        """Resident memory of everything in the sandbox, in bytes (None if unknown)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Kill the sandbox and everything in it; idempotent."""


class Backend(abc.ABC):
    """Creates sandboxes of one isolation technology."""

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Check prerequisites and clean up leftovers; raise ``SandboxError('unavailable')``."""

    @abc.abstractmethod
    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> Sandbox:
        """Start a fresh, empty (not yet loaded) sandbox whose runner is ready.

        ``package_dirs``: host folders mounted read-only in it, besides the configured
        ``sandbox.package_dirs``, and put on the runner's module path.
        """

    @abc.abstractmethod
    def enforced_limits(self) -> list[EnforcedLimit]:
        """What enforces each limit, per language it can start (valid after ``start()``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Kill every sandbox this backend started."""
