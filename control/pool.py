"""The warm pool: pre-started sandboxes per language, bound one actor each.

Life of a sandbox: the backend spawns it *warm* (runner ready, nothing loaded); the
first call of an actor takes a warm one, loads the script into it and *binds* it to
that actor for good; later calls of the actor reuse it. Under concurrent load an
actor gets more sandboxes, up to ``max_per_actor``. A sandbox is thrown away after
an error that broke a limit, after ``max_calls`` calls, after ``idle_timeout``
seconds unused, or to make room for another actor when the language is at
``max_instances``.

Ordering: each actor has one FIFO queue of waiting calls, and a free sandbox is
always handed to the oldest waiter, so calls of one actor *start* in arrival order
(with one sandbox they also finish in that order).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .config import LANGUAGES, Language, SandboxConfig
from .sandbox.base import (
    JSON,
    ActorSource,
    Backend,
    CallContext,
    EventSink,
    Sandbox,
    SandboxError,
    StateHandler,
)

log = logging.getLogger(__name__)

SandboxState = Literal["warm", "busy", "idle"]


class PoolObserver(Protocol):
    """What the pool reports for metrics; every method must be cheap and never raise."""

    def sandbox_started(self, language: Language, seconds: float) -> None: ...

    def sandbox_killed(self, language: Language, reason: str) -> None: ...

    def acquire_waited(self, language: Language, seconds: float) -> None: ...


class _SilentObserver:
    def sandbox_started(self, language: Language, seconds: float) -> None:
        pass

    def sandbox_killed(self, language: Language, reason: str) -> None:
        pass

    def acquire_waited(self, language: Language, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox as the metrics and /ready see it."""

    sandbox_id: str
    language: Language
    state: SandboxState
    actor_key: str | None
    memory_bytes: int | None


@dataclass(eq=False)
class _Bound:
    """A sandbox loaded with one actor."""

    sandbox: Sandbox
    group: _ActorGroup
    busy: bool = False
    calls: int = 0
    last_used: float = field(default_factory=time.monotonic)
    discard_reason: str | None = None  # set when it must go as soon as it is released


@dataclass(eq=False)
class _ActorGroup:
    """The sandboxes bound to one actor and the calls waiting for one."""

    actor: ActorSource
    members: list[_Bound] = field(default_factory=list)
    idle: deque[_Bound] = field(default_factory=deque)
    waiters: deque[asyncio.Future[_Bound]] = field(default_factory=deque)
    growing: int = 0


class _LanguagePool:
    """Bookkeeping of one language: warm sandboxes and the capacity count."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self.warm: deque[Sandbox] = deque()
        self.count = 0  # live sandboxes of this language, plus ones being spawned
        self.spawning_warm = 0
        self.changed: asyncio.Future[None] | None = None
        self.reached_minimum = False

    def notify(self) -> None:
        """Wake every caller waiting for capacity of this language."""
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)
        self.changed = None

    def wait_changed(self) -> asyncio.Future[None]:
        if self.changed is None or self.changed.done():
            self.changed = asyncio.get_running_loop().create_future()
        return self.changed


class SandboxPool:
    """Hands out sandboxes bound to actors; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        settings: SandboxConfig,
        observer: PoolObserver | None = None,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._observer: PoolObserver = observer or _SilentObserver()
        self._languages = {language: _LanguagePool(language) for language in LANGUAGES}
        self._groups: dict[str, _ActorGroup] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start warming every language in the background and return at once."""
        for language in LANGUAGES:
            self._refill(language)
        self._reaper = asyncio.create_task(self._reap_idle_forever(), name="pool-idle-reaper")

    @property
    def warmed(self) -> bool:
        """Whether every language has reached its ``min_instances`` at least once."""
        return all(pool.reached_minimum for pool in self._languages.values())

    async def wait_warmed(self, timeout: float) -> bool:
        """Wait until :attr:`warmed` (for tests and the CLI); False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.warmed and time.monotonic() < deadline:  # noqa: ASYNC110 (rarely used)
            await asyncio.sleep(0.01)
        return self.warmed

    async def close(self) -> None:
        """Kill every sandbox (warm, idle and busy) and fail the waiting calls."""
        self._closing = True
        tasks = list(self._tasks)
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        closing: list[tuple[Language, Sandbox]] = []
        for pool in self._languages.values():
            while pool.warm:
                closing.append((pool.language, pool.warm.popleft()))
            pool.notify()
        for group in self._groups.values():
            for waiter in group.waiters:
                if not waiter.done():
                    waiter.set_exception(SandboxError("unavailable", "the server is shutting down"))
            closing.extend((group.actor.language, member.sandbox) for member in group.members)
            group.members.clear()
            group.idle.clear()
        self._groups.clear()
        await asyncio.gather(
            *(self._kill(language, sandbox, "shutdown") for language, sandbox in closing)
        )
        await self._backend.close()

    # -- the call path ----------------------------------------------------------------

    async def execute(
        self,
        actor: ActorSource,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float | None = None,
    ) -> dict[str, JSON]:
        """Run one call of ``actor`` in a sandbox bound to it; raises :class:`SandboxError`.

        ``timeout`` (seconds) shortens the call's limit below ``sandbox.call_timeout``.
        """
        member = await self._acquire(actor)
        limit = self._settings.call_timeout
        if timeout is not None:
            limit = min(limit, timeout)
        try:
            outputs = await member.sandbox.call(context, state, events, timeout=limit)
        except SandboxError as error:
            if error.destroys_sandbox or not member.sandbox.alive:
                member.discard_reason = error.kind
            self._release(member)
            raise
        except BaseException:
            # Cancelled mid-call (client gone, shutdown): the runner's state is unknown.
            member.discard_reason = "cancelled"
            self._release(member)
            raise
        self._release(member)
        return outputs

    async def unload(self, actor_key: str) -> None:
        """Throw away every sandbox bound to the actor (busy ones when they finish)."""
        group = self._groups.pop(actor_key, None)
        if group is None:
            return
        for member in list(group.members):
            if member.busy:
                member.discard_reason = "unload"
            else:
                self._forget(member)
                self._spawn_task(self._kill(group.actor.language, member.sandbox, "unload"))

    def snapshot(self) -> list[SandboxInfo]:
        """Every live sandbox with its state and memory use."""
        infos: list[SandboxInfo] = []
        for pool in self._languages.values():
            infos.extend(
                SandboxInfo(
                    sandbox.sandbox_id, pool.language, "warm", None, sandbox.memory_usage()
                )
                for sandbox in pool.warm
            )
        for key, group in self._groups.items():
            infos.extend(
                SandboxInfo(
                    member.sandbox.sandbox_id,
                    group.actor.language,
                    "busy" if member.busy else "idle",
                    key,
                    member.sandbox.memory_usage(),
                )
                for member in group.members
            )
        return infos

    # -- acquiring ----------------------------------------------------------------------

    def _group_for(self, actor: ActorSource) -> _ActorGroup:
        group = self._groups.get(actor.key)
        if group is None or group.actor != actor:
            if group is not None:
                # The script changed under the same name: old sandboxes must not serve it.
                self._groups.pop(actor.key)
                for member in group.members:
                    member.discard_reason = "reloaded"
                    if not member.busy:
                        self._forget(member)
                        self._spawn_task(self._kill(actor.language, member.sandbox, "reloaded"))
            group = _ActorGroup(actor)
            self._groups[actor.key] = group
        return group

    async def _acquire(self, actor: ActorSource) -> _Bound:
        if self._closing:
            raise SandboxError("unavailable", "the server is shutting down")
        group = self._group_for(actor)
        if not group.waiters and group.idle:
            member = group.idle.pop()
            member.busy = True
            return member
        started = time.monotonic()
        deadline = started + self._settings.pool.acquire_timeout
        waiter: asyncio.Future[_Bound] = asyncio.get_running_loop().create_future()
        group.waiters.append(waiter)
        pool = self._languages[actor.language]
        try:
            while not waiter.done():
                if self._can_grow(group):
                    await self._grow(group)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake_on: set[asyncio.Future[Any]] = {waiter, pool.wait_changed()}
                await asyncio.wait(wake_on, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                pool_settings = self._settings.pool
                raise SandboxError(
                    "pool_exhausted",
                    f"no {actor.language} sandbox for actor {actor.key!r} within "
                    f"{pool_settings.acquire_timeout:g} s (max_instances "
                    f"{self._max(actor.language)}, max_per_actor {pool_settings.max_per_actor})",
                )
            member = waiter.result()
        except BaseException:
            self._abandon(group, waiter)
            raise
        self._observer.acquire_waited(actor.language, time.monotonic() - started)
        return member

    def _abandon(self, group: _ActorGroup, waiter: asyncio.Future[_Bound]) -> None:
        """A waiter gave up: take it out of the queue, and pass on a sandbox it was given."""
        with contextlib.suppress(ValueError):
            group.waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._release(waiter.result())
        elif not waiter.done():
            waiter.cancel()

    def _can_grow(self, group: _ActorGroup) -> bool:
        if len(group.members) + group.growing >= self._settings.pool.max_per_actor:
            return False
        if group.growing >= len(group.waiters):
            return False  # enough sandboxes are already coming for the waiting calls
        return self._has_capacity(group.actor.language)

    def _has_capacity(self, language: Language) -> bool:
        pool = self._languages[language]
        if pool.warm or pool.count < self._max(language):
            return True
        return self._evictable(language) is not None

    def _max(self, language: Language) -> int:
        return self._settings.pool.for_language(language).max_instances

    def _evictable(self, language: Language) -> _Bound | None:
        """The least recently used idle sandbox of another actor of this language."""
        oldest: _Bound | None = None
        for group in self._groups.values():
            if group.actor.language != language or group.waiters:
                continue
            for member in group.idle:
                if oldest is None or member.last_used < oldest.last_used:
                    oldest = member
        return oldest

    async def _grow(self, group: _ActorGroup) -> None:
        """Bind one more sandbox to the actor and hand it to the oldest waiter."""
        actor = group.actor
        group.growing += 1
        try:
            sandbox = await self._take_sandbox(actor.language, actor.package_dirs)
            if sandbox is None:
                group.growing -= 1
                return
            try:
                await sandbox.load(actor)
            except BaseException as error:
                reason = error.kind if isinstance(error, SandboxError) else "load_failed"
                self._languages[actor.language].count -= 1
                self._spawn_task(self._kill(actor.language, sandbox, reason, counted=False))
                raise
        except SandboxError as error:
            # A script that does not load (or a backend that cannot start) fails the
            # oldest call; the others may still try.
            group.growing -= 1
            if group.waiters:
                first = group.waiters.popleft()
                if not first.done():
                    first.set_exception(error)
            return
        except BaseException:
            group.growing -= 1
            raise
        group.growing -= 1
        member = _Bound(sandbox, group)
        if self._groups.get(actor.key) is not group or self._closing:
            self._languages[actor.language].count -= 1
            self._spawn_task(self._kill(actor.language, sandbox, "unload", counted=False))
            return
        group.members.append(member)
        self._hand_over(member)

    async def _take_sandbox(
        self, language: Language, package_dirs: tuple[str, ...] = ()
    ) -> Sandbox | None:
        """A ready, unloaded sandbox: a warm one, a new one, or a new one in place of an
        evicted idle one; None when the language is at capacity with nothing to evict.
        An actor with ``package_dirs`` of its own always gets a new one that mounts them."""
        pool = self._languages[language]
        while True:
            while pool.warm and not package_dirs:
                sandbox = pool.warm.popleft()
                self._refill(language)
                if sandbox.alive:
                    return sandbox
                self._spawn_task(self._kill(language, sandbox, "crashed"))
            if pool.count < self._max(language):
                break
            if package_dirs and pool.warm:
                # A warm sandbox cannot serve this actor: its slot is taken over (killed
                # first, so that the hard cap holds).
                await self._kill(language, pool.warm.popleft(), "evicted", counted=False)
                return await self._spawn_in_slot(language, package_dirs)
            victim = self._evictable(language)
            if victim is None:
                return None
            self._forget(victim)
            # Wait for the kill so that the hard cap holds, then look again.
            await self._kill(language, victim.sandbox, "evicted")
        pool.count += 1
        return await self._spawn_in_slot(language, package_dirs)

    async def _spawn_in_slot(self, language: Language, package_dirs: tuple[str, ...]) -> Sandbox:
        """Spawn into a slot already counted; the slot is given back if the spawn fails."""
        pool = self._languages[language]
        try:
            return await self._spawn(language, package_dirs)
        except BaseException:
            pool.count -= 1
            pool.notify()
            raise

    async def _spawn(self, language: Language, package_dirs: tuple[str, ...] = ()) -> Sandbox:
        started = time.monotonic()
        if package_dirs:
            sandbox = await self._backend.spawn(language, package_dirs=package_dirs)
        else:
            sandbox = await self._backend.spawn(language)
        self._observer.sandbox_started(language, time.monotonic() - started)
        return sandbox

    # -- releasing ----------------------------------------------------------------------

    def _release(self, member: _Bound) -> None:
        member.busy = False
        member.calls += 1
        member.last_used = time.monotonic()
        group = member.group
        reason = member.discard_reason
        if reason is None and not member.sandbox.alive:
            reason = "crashed"
        if reason is None and member.calls >= self._settings.pool.max_calls:
            reason = "recycled"
        if reason is None and self._groups.get(group.actor.key) is not group:
            reason = "unload"
        if reason is not None:
            self._forget(member)
            self._spawn_task(self._kill(group.actor.language, member.sandbox, reason))
            return
        self._hand_over(member)

    def _hand_over(self, member: _Bound) -> None:
        """Give a free sandbox to the oldest live waiter of its actor, or park it idle."""
        group = member.group
        while group.waiters:
            waiter = group.waiters.popleft()
            if not waiter.done():
                member.busy = True
                waiter.set_result(member)
                return
        member.busy = False
        group.idle.append(member)
        self._languages[group.actor.language].notify()  # it may be evicted for another actor

    def _forget(self, member: _Bound) -> None:
        """Take a bound sandbox out of its group (the caller kills it)."""
        group = member.group
        with contextlib.suppress(ValueError):
            group.members.remove(member)
        with contextlib.suppress(ValueError):
            group.idle.remove(member)
        if not group.members and not group.waiters and self._groups.get(group.actor.key) is group:
            del self._groups[group.actor.key]

    async def _kill(
        self, language: Language, sandbox: Sandbox, reason: str, *, counted: bool = True
    ) -> None:
        """Close a sandbox; ``counted`` means it still occupies capacity until closed."""
        try:
            await sandbox.close()
        except Exception:  # a sandbox that fails to close must not stop the pool
            log.exception("closing sandbox %s failed", sandbox.sandbox_id)
        finally:
            pool = self._languages[language]
            if counted:
                pool.count -= 1
            self._observer.sandbox_killed(language, reason)
            pool.notify()
            if not self._closing:
                self._refill(language)

    # -- background work ------------------------------------------------------------------

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refill(self, language: Language) -> None:
        """Start warm sandboxes until ``min_instances`` are warm (within ``max_instances``)."""
        if self._closing:
            return
        pool = self._languages[language]
        wanted = self._settings.pool.for_language(language).min_instances
        while len(pool.warm) + pool.spawning_warm < wanted and pool.count < self._max(language):
            pool.count += 1
            pool.spawning_warm += 1
            self._spawn_task(self._warm_one(language))
        if len(pool.warm) >= wanted:
            pool.reached_minimum = True

    async def _warm_one(self, language: Language) -> None:
        pool = self._languages[language]
        try:
            sandbox = await self._spawn(language)
        except asyncio.CancelledError:
            pool.count -= 1
            raise
        except Exception as error:
            pool.count -= 1
            log.error("could not start a %s sandbox: %s", language, error)
            await asyncio.sleep(1.0)  # do not spin on a backend that keeps failing
            return
        finally:
            pool.spawning_warm -= 1
        if self._closing:
            pool.count -= 1
            await self._kill(language, sandbox, "shutdown", counted=False)
            return
        pool.warm.append(sandbox)
        if len(pool.warm) >= self._settings.pool.for_language(language).min_instances:
            pool.reached_minimum = True
        pool.notify()

    async def _reap_idle_forever(self) -> None:
        idle_timeout = self._settings.pool.idle_timeout
        interval = min(max(idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            self._reap_idle(time.monotonic() - idle_timeout)

    def _reap_idle(self, used_before: float) -> None:
        for group in list(self._groups.values()):
            for member in list(group.idle):
                if member.last_used < used_before:
                    self._forget(member)
                    self._spawn_task(self._kill(group.actor.language, member.sandbox, "idle"))
        for language, pool in self._languages.items():
            for sandbox in [s for s in pool.warm if not s.alive]:
                pool.warm.remove(sandbox)
                self._spawn_task(self._kill(language, sandbox, "crashed"))


_ids = itertools.count(1)


def next_sandbox_id(prefix: str) -> str:
    """A process-unique sandbox id for backends (``prefix-<n>``)."""
    return f"{prefix}-{next(_ids)}"
