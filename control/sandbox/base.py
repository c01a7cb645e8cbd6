"""The sandbox backend interface: what the pool needs from bubblewrap and Docker alike.

A :class:`Sandbox` is one long-lived runner process (Python or Node.js) inside an
isolation boundary. It is loaded with exactly one actor, then called many times.
While a call runs, the runner may stream events (outputs, logs) and ask for state;
both go through the objects the caller passes in (:class:`~..vocabulary.StateHandler`,
:class:`~..vocabulary.EventSink`), so the sandbox layer knows nothing of WebSockets or
Redis. Failures are :class:`~..errors.SandboxError` (see :mod:`..errors`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from ..vocabulary import JSON, ActorSource, CallContext, EventSink, Language, StateHandler
from .enforced import EnforcedLimit


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
        sandbox under contention (and with ``sandbox.cpu_limit_per_actor`` one
        ``cpu_limit`` in all). A no-op where the backend has no such weight."""
        return None

    @abc.abstractmethod
    async def load(self, actor: ActorSource) -> Mapping[str, JSON]:
        """Load the actor's script; returns its metadata. Raises :class:`SandboxError`."""

    def start_call(self, context: CallContext, events: EventSink) -> bool:
        """Send the call now, before :meth:`call` is awaited with the same ``context``
        (which then waits for it); True when sent. The pool uses it to hand a freed
        sandbox to the next waiting call without leaving the runner idle until that
        call's task runs. A backend that does not support it returns False."""
        return False

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

        Raises :class:`~..errors.CallError`: a :class:`~..errors.SandboxError`, or the
        :class:`~..errors.StateError` a state request failed with; when
        ``error.destroys_sandbox`` the sandbox is already dead or must be closed by the
        caller.
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
