"""The warm pool: pre-started sandboxes per language, bound one actor each.

Life of a sandbox: the backend spawns it *warm* (runner ready, nothing loaded); the
first call of an actor takes a warm one, loads the script into it and *binds* it to
that actor for good; later calls of the actor reuse it. Under concurrent load an
actor gets more sandboxes, up to ``max_per_actor``. A sandbox is thrown away after
an error that broke a limit, after ``max_calls`` calls, after ``idle_timeout``
seconds unused, or to make room for another actor when the language is at
``max_instances``. Warm sandboxes are started a few at a time (``WARMING_AT_ONCE``),
and a warm-up that failed is tried again (after 1 s, then 2, 4 ... up to 30 s).

Ordering: each actor has one FIFO queue of waiting calls, and a free sandbox is
always handed to the oldest waiter, so calls of one actor *start* in arrival order
(with one sandbox they also finish in that order).

Fairness: one actor flooding the node must not starve the others. Its queue is
bounded (``max_queued_per_actor`` calls beyond the ``max_per_actor`` running; more
are refused at once with ``pool_exhausted``, ``data.reason`` ``queue_full``); when a
language is at ``max_instances``, capacity goes to the waiting actor with the fewest
sandboxes, and an actor holding at least two more than a starved one gives one up
when a call of its own ends (killed as ``rebalanced``). Waiting calls sleep on their
own future, so a long queue costs nothing while other actors' calls come and go.
Optionally (``max_calls_per_second_per_actor``) an actor's calls are paced before they
start (:mod:`.pacing`), which bounds the share of the event loop one actor's fast calls
take; past ``acquire_timeout`` of pacing they are refused (``rate_limited``). CPU:
each of an actor's ``k`` sandboxes gets ``1/k`` of a sandbox's CPU weight
(``Sandbox.set_cpu_share``: cgroup ``cpu.shares`` / ``cpu.weight``), so under
contention an actor running many sandboxes weighs as much as one running one.
Crash loops (``crash_loop_threshold``, :mod:`.crashloop`): after that many calls of an
actor in a row killed their sandbox (``CRASH_KINDS``), its calls are refused at once
(``pool_exhausted``, ``data.reason`` ``crash_loop``, ``data.retry_after`` seconds) for a
wait that doubles with each further death up to ``crash_loop_backoff_max``, so the node
stops paying a cold start per call for it; a call that returns ends it.
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

from .config import SandboxConfig
from .crashloop import CrashLoop
from .errors import CallError, PoolError, SandboxError
from .pacing import Pacer
from .sandbox.base import Backend, Sandbox
from .vocabulary import JSON, LANGUAGES, ActorSource, CallContext, EventSink, Language, StateHandler

log = logging.getLogger(__name__)

WARMING_AT_ONCE = 2
"""Warm sandboxes started at the same time per language. Starting all of a large
``min_instances`` at once (10 in the production inventory) makes them compete for the
CPU until every one misses the backend's start timeout on a small or slow host; a
call that finds no warm sandbox still starts its own at once."""

SandboxState = Literal["warm", "busy", "idle"]

CRASH_KINDS = frozenset({"memory", "crashed", "output_too_large"})
"""Call errors that mean the actor's call killed its sandbox, which crash-loop backoff
counts: out of memory, the runner died, output over ``max_output_bytes``. Not
``timeout``: a slow dependency outside makes a healthy actor time out, and its calls
already paid their time."""


class PoolObserver(Protocol):
    """What the pool reports for metrics; every method must be cheap and never raise."""

    def sandbox_started(self, language: Language, seconds: float) -> None: ...

    def sandbox_killed(self, language: Language, reason: str) -> None: ...

    def acquire_waited(self, language: Language, seconds: float) -> None: ...

    def stray_frames_dropped(self, language: Language, count: int) -> None: ...


class _SilentObserver:
    def sandbox_started(self, language: Language, seconds: float) -> None:
        pass

    def sandbox_killed(self, language: Language, reason: str) -> None:
        pass

    def acquire_waited(self, language: Language, seconds: float) -> None:
        pass

    def stray_frames_dropped(self, language: Language, count: int) -> None:
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
    started: bool = False  # handed over with its waiter's call already sent (start_call)


@dataclass(eq=False)
class _ActorGroup:
    """The sandboxes bound to one actor and the calls waiting for one."""

    actor: ActorSource
    members: list[_Bound] = field(default_factory=list)
    idle: deque[_Bound] = field(default_factory=deque)
    waiters: deque[asyncio.Future[_Bound]] = field(default_factory=deque)
    growing: int = 0

    @property
    def size(self) -> int:
        """Sandboxes bound to the actor or being bound to it."""
        return len(self.members) + self.growing

    def wanted(self, max_per_actor: int) -> int:
        """How many more sandboxes to bind now: one per waiting call that no sandbox
        being bound will serve, within ``max_per_actor``."""
        return min(len(self.waiters) - self.growing, max_per_actor - self.size)


@dataclass(frozen=True, eq=False)
class _Replace:
    """A sandbox to kill first (an evicted idle one of another actor, or a warm one
    that cannot serve the actor); its slot, still counted, passes to the new one."""

    sandbox: Sandbox


_Claim = Sandbox | _Replace | Literal["new"]
"""Room reserved for one growth: a warm sandbox to load, a sandbox to replace, or a
new slot already counted."""


class _LanguagePool:
    """Bookkeeping of one language: warm sandboxes, the capacity count, the actors
    with calls waiting for a sandbox."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self.warm: deque[Sandbox] = deque()
        self.count = 0  # live sandboxes of this language, plus ones being spawned
        self.spawning_warm = 0
        self.reached_minimum = False
        # Actors that had calls waiting (an ordered set; pruned as their queues empty).
        self.waiting: dict[_ActorGroup, None] = {}
        self.yielding = 0  # sandboxes being killed to give their slot to a starved actor
        self.failure: str | None = None  # why the latest start failed (None: it worked)
        self.failed_warm_ups = 0  # in a row; the retry waits 1, 2, 4 ... 30 s


_Queued = tuple[float, ActorSource, CallContext | None, EventSink | None]
"""A waiting call: its acquire deadline (loop time), its actor, and the call to send
as soon as a sandbox is handed to it (None: the caller sends it itself)."""


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
        # Calls waiting for a sandbox, oldest first, with their acquire deadline (loop
        # time): one timer for all of them (:meth:`_expire_waiters`), not one per call.
        self._queued: dict[asyncio.Future[_Bound], _Queued] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        pool = settings.pool
        self._pacer = (
            Pacer(pool.max_calls_per_second_per_actor, pool.max_per_actor, pool.acquire_timeout)
            if pool.max_calls_per_second_per_actor > 0
            else None
        )
        self._crash_loop = (
            CrashLoop(
                pool.crash_loop_threshold, pool.crash_loop_backoff, pool.crash_loop_backoff_max
            )
            if pool.crash_loop_threshold > 0
            else None
        )

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

    def start_failures(self) -> dict[Language, str]:
        """Languages whose sandboxes cannot be started now (their latest start failed
        and none is warm), with the backend's reason: for /ready, after the pool
        warmed once (an engine restarted, a binary gone, a full disk)."""
        return {
            language: pool.failure
            for language, pool in self._languages.items()
            if pool.failure is not None
            and not pool.warm
            and self._settings.pool.for_language(language).min_instances > 0
        }

    async def wait_warmed(self, timeout: float) -> bool:
        """Wait until :attr:`warmed` (for tests and the CLI); False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.warmed and time.monotonic() < deadline:  # noqa: ASYNC110 (rarely used)
            await asyncio.sleep(0.01)
        return self.warmed

    async def close(self) -> None:
        """Kill every sandbox (warm, idle and busy) and fail the waiting calls."""
        self._closing = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
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
            pool.waiting.clear()
        for group in self._groups.values():
            for waiter in group.waiters:
                if not waiter.done():
                    waiter.set_exception(PoolError("unavailable", "the server is shutting down"))
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
        """Run one call of ``actor`` in a sandbox bound to it; raises :class:`~.errors.CallError`.

        ``timeout`` (seconds) shortens the call's limit below ``sandbox.call_timeout``.
        """
        if self._pacer is not None:
            await self._pace(actor, self._pacer)
        crash_loop = self._crash_loop
        if crash_loop is None:
            return await self._run(actor, context, state, events, timeout)
        # After pacing: refusals are paced too, so that a client retrying them at once
        # does not turn into a flood of fast calls beyond the actor's rate.
        if not self._refuse_if_crash_looping(actor, crash_loop):
            return await self._run(actor, context, state, events, timeout)
        try:  # the probe call after a crash-loop wait
            return await self._run(actor, context, state, events, timeout)
        finally:
            crash_loop.ended(actor.key)

    async def _run(
        self,
        actor: ActorSource,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        timeout: float | None,
    ) -> dict[str, JSON]:
        member = await self._acquire(actor, context, events)
        member.started = False  # call() below waits for a call start_call() sent
        limit = self._settings.call_timeout
        if timeout is not None:
            limit = min(limit, timeout)
        try:
            outputs = await member.sandbox.call(context, state, events, timeout=limit)
        except CallError as error:
            if error.destroys_sandbox:
                member.discard_reason = error.kind
            elif not member.sandbox.alive:
                member.discard_reason = _retire_label(member.sandbox)
            self._count_death(actor, error, member)
            self._release(member)
            raise
        except BaseException:
            # Cancelled mid-call (client gone, shutdown): the runner's state is unknown.
            member.discard_reason = "cancelled"
            self._release(member)
            raise
        if self._crash_loop is not None and member.sandbox.alive:
            self._crash_loop.healthy(actor.key)
        self._release(member)
        return outputs

    async def unload(self, actor_key: str) -> None:
        """Throw away every sandbox bound to the actor (busy ones when they finish)."""
        group = self._groups.pop(actor_key, None)
        if group is None:
            return
        while group.waiters:
            waiter = group.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    PoolError(
                        "unavailable", f"actor {actor_key!r} was unloaded while the call waited"
                    )
                )
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
                SandboxInfo(sandbox.sandbox_id, pool.language, "warm", None, sandbox.memory_usage())
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

    async def _pace(self, actor: ActorSource, pacer: Pacer) -> None:
        """Wait for the actor's next start under ``max_calls_per_second_per_actor``, or
        refuse the call at once when that is more than ``acquire_timeout`` away."""
        delay = pacer.reserve(actor.key, time.monotonic())
        if delay is None:
            raise PoolError(
                "pool_exhausted",
                f"actor {actor.key!r} is paced to {pacer.rate:g} calls/s "
                f"(max_calls_per_second_per_actor) and its waiting calls fill the next "
                f"{pacer.max_delay:g} s (acquire_timeout): the call was refused at once",
                details={"reason": "rate_limited"},
            )
        if delay > 0:
            await asyncio.sleep(delay)

    def _refuse_if_crash_looping(self, actor: ActorSource, crash_loop: CrashLoop) -> bool:
        """Refuse the call at once while the actor backs off after its sandboxes died,
        or while the one call let through after the wait runs; returns whether this
        call is that one (the probe)."""
        now = time.monotonic()
        admitted, probe = crash_loop.admit(actor.key, now)
        if admitted:
            return probe
        wait, deaths = crash_loop.waiting(actor.key, now)
        if wait <= 0:
            raise PoolError(
                "pool_exhausted",
                f"actor {actor.key!r} is in a crash loop: its last {deaths} calls killed "
                f"their sandbox (out of memory, crashed or output_too_large); one call "
                "runs to see whether it still does, and others are refused at once until it ends",
                details={"reason": "crash_loop", "retry_after": 0.0},
            )
        raise PoolError(
            "pool_exhausted",
            f"actor {actor.key!r} is in a crash loop: its last {deaths} calls killed their "
            f"sandbox (out of memory, crashed or output_too_large); no sandbox is started "
            f"for it for another {wait:.1f} s (crash_loop_backoff): the call was refused at once",
            details={"reason": "crash_loop", "retry_after": round(wait, 3)},
        )

    def _count_death(self, actor: ActorSource, error: CallError, member: _Bound) -> None:
        """Feed the crash-loop state: a sandbox killed by its call (``memory``,
        ``crashed``) counts; a call whose sandbox lives on forgets the deaths."""
        if self._crash_loop is None:
            return
        if error.kind in CRASH_KINDS:
            wait = self._crash_loop.died(actor.key, time.monotonic())
            if wait > 0:
                log.warning(
                    "actor %s: its sandboxes keep dying (%s); its calls are refused for %.1f s",
                    actor.key, error.kind, wait,
                )  # fmt: skip
        elif member.discard_reason is None and member.sandbox.alive:
            self._crash_loop.healthy(actor.key)

    def _group_for(self, actor: ActorSource) -> _ActorGroup:
        group = self._groups.get(actor.key)
        if group is None or group.actor != actor:
            waiters: deque[asyncio.Future[_Bound]] = deque()
            if group is not None:
                # The script changed under the same name: old sandboxes must not serve it;
                # the calls waiting for one wait for the new script's instead.
                self._groups.pop(actor.key)
                waiters, group.waiters = group.waiters, deque()
                for member in group.members:
                    member.discard_reason = "reloaded"
                    if not member.busy:
                        self._forget(member)
                        self._spawn_task(self._kill(actor.language, member.sandbox, "reloaded"))
            group = _ActorGroup(actor, waiters=waiters)
            self._groups[actor.key] = group
            if waiters:
                self._languages[actor.language].waiting[group] = None
        return group

    async def _acquire(
        self,
        actor: ActorSource,
        context: CallContext | None = None,
        events: EventSink | None = None,
    ) -> _Bound:
        if self._closing:
            raise PoolError("unavailable", "the server is shutting down")
        group = self._group_for(actor)
        while not group.waiters and group.idle:
            member = group.idle.pop()
            if not member.sandbox.alive:
                # It became unusable while idle (e.g. an uncaught exception after its
                # call): replaced before it serves this call.
                self._retire(member)
                group = self._group_for(actor)
                continue
            member.busy = True
            return member
        settings = self._settings.pool
        room = max(0, settings.max_per_actor - len(group.members))
        if len(group.waiters) >= room + settings.max_queued_per_actor:
            raise PoolError(
                "pool_exhausted",
                f"actor {actor.key!r} already has {len(group.waiters)} calls waiting for a "
                f"sandbox (it runs in {len(group.members)} of max_per_actor "
                f"{settings.max_per_actor}; max_queued_per_actor "
                f"{settings.max_queued_per_actor}): the call was refused at once",
                details={"reason": "queue_full", "queued": len(group.waiters)},
            )
        started = time.monotonic()
        loop = self._loop
        if loop is None:  # looked up once: get_running_loop() costs a getpid(2)
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Bound] = loop.create_future()
        group.waiters.append(waiter)
        self._languages[actor.language].waiting[group] = None
        self._schedule_growth(actor.language)
        deadline = loop.time() + settings.acquire_timeout
        self._queued[waiter] = (deadline, actor, context, events)
        if self._expiry is None:
            self._expiry = loop.call_at(deadline, self._expire_waiters)
        try:
            # A timeout arrives as the waiter's exception (pool_exhausted).
            member = await waiter
        except BaseException:
            self._abandon(group, waiter)
            raise
        finally:
            self._queued.pop(waiter, None)
        self._observer.acquire_waited(actor.language, time.monotonic() - started)
        return member

    def _expire_waiters(self) -> None:
        """The waiting calls' one timer fired: fail each call that has waited
        ``acquire_timeout`` (``pool_exhausted``), then re-arm for the oldest one left.

        Every call waits the same ``acquire_timeout``, so the oldest waiter has the
        earliest deadline and the queue is swept from its front.
        """
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = self._queued
        settings = self._settings.pool
        while queued:
            waiter, (deadline, actor, _, _) = next(iter(queued.items()))
            if deadline > now:
                self._expiry = loop.call_at(deadline, self._expire_waiters)
                return
            del queued[waiter]
            if not waiter.done():
                waiter.set_exception(
                    PoolError(
                        "pool_exhausted",
                        f"no {actor.language} sandbox for actor {actor.key!r} within "
                        f"{settings.acquire_timeout:g} s (max_instances "
                        f"{self._max(actor.language)}, max_per_actor "
                        f"{settings.max_per_actor})",
                        details={"reason": "timeout"},
                    )
                )

    def _abandon(self, group: _ActorGroup, waiter: asyncio.Future[_Bound]) -> None:
        """A waiter gave up: take it out of the queue, and pass on a sandbox it was given."""
        with contextlib.suppress(ValueError):
            group.waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            member = waiter.result()
            if member.started:  # its call was sent: the runner's state is unknown now
                member.discard_reason = member.discard_reason or "cancelled"
            self._release(member)
        elif not waiter.done():
            waiter.cancel()

    def _max(self, language: Language) -> int:
        return self._settings.pool.for_language(language).max_instances

    def _schedule_growth(self, language: Language) -> None:
        """Bind more sandboxes for waiting calls of this language while it has capacity.

        Called whenever capacity or demand changes. The actor with the fewest sandboxes
        (bound or being bound) goes first, so an actor flooding the node cannot take
        the capacity other actors wait for; within an actor, a sandbox goes to the
        oldest waiting call (see :meth:`_hand_over`).
        """
        if self._closing:
            return
        pool = self._languages[language]
        cap = self._settings.pool.max_per_actor
        while pool.waiting:
            best: _ActorGroup | None = None
            for group in list(pool.waiting):
                if not group.waiters or self._groups.get(group.actor.key) is not group:
                    del pool.waiting[group]
                elif group.wanted(cap) > 0 and (best is None or group.size < best.size):
                    best = group
            if best is None:
                return
            claim = self._claim_capacity(language, best.size, best.actor.package_dirs)
            if claim is None:
                return
            best.growing += 1
            self._spawn_task(self._grow(best, claim))

    def _claim_capacity(
        self, language: Language, size: int, package_dirs: tuple[str, ...] = ()
    ) -> _Claim | None:
        """Reserve room for one more sandbox of an actor that holds ``size``: a warm
        sandbox, a new slot (already counted), or a sandbox to replace: an idle one of
        another actor that holds more, or, for an actor with ``package_dirs`` of its own
        (it always gets a new sandbox that mounts them), a warm one. None when the
        language is at capacity with nothing to take."""
        pool = self._languages[language]
        while pool.warm and not package_dirs:
            sandbox = pool.warm.popleft()
            self._refill(language)
            if sandbox.alive:
                return sandbox
            self._spawn_task(self._kill(language, sandbox, "crashed"))
        if pool.count < self._max(language):
            pool.count += 1
            return "new"
        if package_dirs and pool.warm:
            return _Replace(pool.warm.popleft())
        victim = self._evictable(language, size)
        if victim is None:
            return None
        self._forget(victim)
        return _Replace(victim.sandbox)

    def _evictable(self, language: Language, size: int) -> _Bound | None:
        """The least recently used idle sandbox of another actor of this language that
        holds more than ``size`` sandboxes (a busy actor does not evict the one
        sandbox of a quieter one, which would then start cold on its next call)."""
        oldest: _Bound | None = None
        for group in self._groups.values():
            if group.actor.language != language or group.waiters or group.size <= size:
                continue
            for member in group.idle:
                if oldest is None or member.last_used < oldest.last_used:
                    oldest = member
        return oldest

    async def _grow(self, group: _ActorGroup, claim: _Claim) -> None:
        """Bind one more sandbox to the actor and hand it to the oldest waiter; the
        caller counted it in ``group.growing`` and reserved ``claim`` for it."""
        actor = group.actor
        language = actor.language
        sandbox: Sandbox | None = None
        try:
            if isinstance(claim, _Replace):
                # Wait for the kill so that the hard cap holds; its slot is ours.
                await self._kill(language, claim.sandbox, "evicted", counted=False)
            if isinstance(claim, Sandbox):
                sandbox = claim
            else:
                sandbox = await self._spawn(language, actor.package_dirs)
            await sandbox.load(actor)
        except BaseException as error:
            group.growing -= 1
            if sandbox is not None:
                reason = error.kind if isinstance(error, CallError) else "load_failed"
                self._spawn_task(self._kill(language, sandbox, reason))
            else:
                self._languages[language].count -= 1
            if not isinstance(error, Exception):
                raise  # cancelled: the pool is closing
            if not isinstance(error, CallError):
                log.exception("starting a %s sandbox for %s failed", language, actor.key)
                error = SandboxError("unavailable", f"could not start a {language} sandbox")
            # A script that does not load (or a backend that cannot start) fails the
            # oldest call; the others may still try.
            while group.waiters:
                first = group.waiters.popleft()
                if not first.done():
                    first.set_exception(error)
                    break
            self._schedule_growth(language)
            return
        group.growing -= 1
        if self._groups.get(actor.key) is not group or self._closing:
            self._spawn_task(self._kill(language, sandbox, "unload"))
            return
        member = _Bound(sandbox, group)
        group.members.append(member)
        self._reweigh(group)
        self._hand_over(member)

    async def _spawn(self, language: Language, package_dirs: tuple[str, ...] = ()) -> Sandbox:
        started = time.monotonic()
        pool = self._languages[language]
        try:
            if package_dirs:
                sandbox = await self._backend.spawn(language, package_dirs=package_dirs)
            else:
                sandbox = await self._backend.spawn(language)
        except Exception as error:
            pool.failure = str(error) or type(error).__name__
            raise
        pool.failure = None
        self._observer.sandbox_started(language, time.monotonic() - started)
        return sandbox

    # -- releasing ----------------------------------------------------------------------

    def _release(self, member: _Bound) -> None:
        member.busy = False
        member.calls += 1
        member.last_used = time.monotonic()
        group = member.group
        strays = member.sandbox.take_stray_frames()
        if strays:
            self._observer.stray_frames_dropped(group.actor.language, strays)
        reason = member.discard_reason
        if reason is None and not member.sandbox.alive:
            reason = _retire_label(member.sandbox)
        if reason is None and member.calls >= self._settings.pool.max_calls:
            reason = "recycled"
        if reason is None and self._groups.get(group.actor.key) is not group:
            reason = "unload"
        if reason is None and group.waiters and self._owes_a_sandbox(group):
            self._forget(member)
            self._languages[group.actor.language].yielding += 1
            self._spawn_task(self._give_up(member))
            return
        if reason is not None:
            self._forget(member)
            self._spawn_task(self._kill(group.actor.language, member.sandbox, reason))
            return
        self._hand_over(member)

    def _owes_a_sandbox(self, group: _ActorGroup) -> bool:
        """Whether the actor holds more than its share of a full language: an actor
        with at least two sandboxes fewer has calls waiting for capacity, and no
        other sandbox is already being given up for it."""
        language = group.actor.language
        pool = self._languages[language]
        if not pool.waiting or pool.yielding or pool.warm or pool.count < self._max(language):
            return False
        cap = self._settings.pool.max_per_actor
        return any(
            other is not group
            and other.wanted(cap) > 0
            and other.size + 1 < group.size
            and self._groups.get(other.actor.key) is other
            for other in pool.waiting
        )

    async def _give_up(self, member: _Bound) -> None:
        """Kill a sandbox of an actor over its share (``yielding`` was counted by the
        caller); the freed slot goes to the starved actor."""
        pool = self._languages[member.group.actor.language]
        try:
            await self._kill(pool.language, member.sandbox, "rebalanced")
        finally:
            pool.yielding -= 1

    def _hand_over(self, member: _Bound) -> None:
        """Give a free sandbox to the oldest live waiter of its actor, or park it idle."""
        group = member.group
        while group.waiters:
            waiter = group.waiters.popleft()
            if not waiter.done():
                member.busy = True
                waiter.set_result(member)
                # Send the waiter's call now: the runner would otherwise sit idle until
                # the waiter's task runs, a loop round or two later.
                queued = self._queued.get(waiter)
                if queued is not None and queued[2] is not None and queued[3] is not None:
                    member.started = member.sandbox.start_call(queued[2], queued[3])
                return
        member.busy = False
        group.idle.append(member)
        self._schedule_growth(group.actor.language)  # it may be evicted for another actor

    def _forget(self, member: _Bound) -> None:
        """Take a bound sandbox out of its group (the caller kills it)."""
        group = member.group
        with contextlib.suppress(ValueError):
            group.members.remove(member)
        with contextlib.suppress(ValueError):
            group.idle.remove(member)
        self._reweigh(group)
        if not group.members and not group.waiters and self._groups.get(group.actor.key) is group:
            del self._groups[group.actor.key]

    @staticmethod
    def _reweigh(group: _ActorGroup) -> None:
        """Give each sandbox of the actor ``1/k`` of one sandbox's CPU weight (``k``: the
        actor's sandboxes), so that the actor as a whole weighs as one sandbox."""
        share = 1.0 / max(1, len(group.members))
        for member in group.members:
            member.sandbox.set_cpu_share(share)

    def _retire(self, member: _Bound) -> None:
        """Throw away a bound sandbox that may not serve again (see ``Sandbox.retire_reason``)."""
        self._forget(member)
        language = member.group.actor.language
        self._spawn_task(self._kill(language, member.sandbox, _retire_label(member.sandbox)))

    async def _kill(
        self, language: Language, sandbox: Sandbox, reason: str, *, counted: bool = True
    ) -> None:
        """Close a sandbox; ``counted`` means it still occupies capacity until closed."""
        strays = sandbox.take_stray_frames()
        if strays:
            self._observer.stray_frames_dropped(language, strays)
        try:
            await sandbox.close()
        except Exception:  # a sandbox that fails to close must not stop the pool
            log.exception("closing sandbox %s failed", sandbox.sandbox_id)
        finally:
            pool = self._languages[language]
            if counted:
                pool.count -= 1
            self._observer.sandbox_killed(language, reason)
            self._schedule_growth(language)
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
        while (
            len(pool.warm) + pool.spawning_warm < wanted
            and pool.count < self._max(language)
            and pool.spawning_warm < WARMING_AT_ONCE
        ):
            pool.count += 1
            pool.spawning_warm += 1
            self._spawn_task(self._warm_one(language))
        if len(pool.warm) >= wanted:
            pool.reached_minimum = True

    async def _warm_one(self, language: Language) -> None:
        pool = self._languages[language]
        sandbox: Sandbox | None = None
        try:
            sandbox = await self._spawn(language)
        except asyncio.CancelledError:
            pool.count -= 1
            raise
        except Exception as error:
            pool.count -= 1
            pool.failed_warm_ups += 1
            log.error("could not start a %s sandbox: %s", language, error)
        finally:
            pool.spawning_warm -= 1
        if sandbox is None:
            # Try again, later each time (do not spin on a backend that keeps failing). A
            # failed warm-up left alone kept the pool below min_instances, and /ready
            # at 503, for good.
            await asyncio.sleep(min(30.0, 2.0 ** (pool.failed_warm_ups - 1)))
            self._refill(language)
            return
        pool.failed_warm_ups = 0
        if self._closing:
            pool.count -= 1
            await self._kill(language, sandbox, "shutdown", counted=False)
            return
        pool.warm.append(sandbox)
        if len(pool.warm) >= self._settings.pool.for_language(language).min_instances:
            pool.reached_minimum = True
        self._schedule_growth(language)
        self._refill(language)  # the next one, WARMING_AT_ONCE at a time

    async def _reap_idle_forever(self) -> None:
        idle_timeout = self._settings.pool.idle_timeout
        interval = min(max(idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            self._reap_idle(time.monotonic() - idle_timeout)

    def _reap_idle(self, used_before: float) -> None:
        if self._pacer is not None:
            self._pacer.prune(time.monotonic())
        for group in list(self._groups.values()):
            for member in list(group.idle):
                if not member.sandbox.alive:
                    self._retire(member)
                elif member.last_used < used_before:
                    self._forget(member)
                    self._spawn_task(self._kill(group.actor.language, member.sandbox, "idle"))
        for language, pool in self._languages.items():
            for sandbox in [s for s in pool.warm if not s.alive]:
                pool.warm.remove(sandbox)
                self._spawn_task(self._kill(language, sandbox, "crashed"))


def _retire_label(sandbox: Sandbox) -> str:
    """The kill reason (a metrics label) for a sandbox that is no longer alive."""
    reason = sandbox.retire_reason
    return "crashed" if reason is None or reason == "crashed" else "retired"


_ids = itertools.count(1)


def next_sandbox_id(prefix: str) -> str:
    """A process-unique sandbox id for backends (``prefix-<n>``)."""
    return f"{prefix}-{next(_ids)}"
