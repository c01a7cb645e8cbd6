"""The runner protocol's asyncio shell: an :class:`asyncio.Protocol` around :mod:`.runner_protocol`.

Every decision (which call a frame belongs to, the output cap, state-request checks, error
kinds) is made by the pure :class:`~.runner_protocol.RunnerProtocol`; this shell feeds it
the bytes the transport delivers, writes what it wants written, and does the waiting: for
the runner's ``ready``, for ``load``, for a call's events, with the timeouts. A call's
events (outputs, logs, state requests) are handled by the coroutine that awaits
:meth:`RunnerClient.call`, so a slow client slows its own runner down (reading pauses when
events pile up); frames that arrive outside their call are dropped as they arrive, logged
with the actor's name and counted in :attr:`RunnerClient.stray_frames`.

Both backends use it: bubblewrap connects it to a socket pair, Docker to the container's
attached stdout (through the demultiplexer of :mod:`.docker.attach`). It never kills
anything itself: once :attr:`broken` (or no longer :attr:`usable`) the backend disposes of
the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from ..errors import SandboxError
from ..vocabulary import JSON, ActorSource, CallContext, ErrorKind, EventSink, StateHandler
from .frames import Message
from .runner_protocol import (
    CallEnding,
    Event,
    Finished,
    Log,
    Output,
    RunnerProtocol,
    StateRequest,
    Stray,
)

log = logging.getLogger(__name__)

DeathReport = Callable[[], Awaitable[tuple[ErrorKind, str]]]
"""Asked when the runner's stream ended: which kind of death it was, and why."""

_PAUSE_AT = 256  # queued call events above which reading from the runner pauses
_STRAY_LOGGED = 10  # stray frames logged one by one per runner; later ones only counted


async def _default_death() -> tuple[ErrorKind, str]:
    return "crashed", "the runner exited"


class RunnerClient(asyncio.Protocol):
    """Drives one runner: ``wait_ready``, one ``load``, then ``call`` many times.

    Connect it to the runner's channel as the transport's protocol (for example with
    ``loop.create_unix_connection(lambda: client, sock=sock)``).
    """

    def __init__(
        self,
        *,
        max_output_bytes: int,
        death_report: DeathReport = _default_death,
        flush_side_channel: Callable[[], Awaitable[None]] | None = None,
        label: str = "runner",
    ) -> None:
        self._protocol = RunnerProtocol(max_output_bytes, label)
        self._death_report = death_report
        self._flush_side_channel = flush_side_channel
        self._label = label
        self._actor = "(no actor)"
        self._transport: asyncio.Transport | None = None
        self._events: deque[Event] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._sink: EventSink | None = None
        self._retire_logged = False
        self._strays_seen = 0
        self._started: CallContext | None = None  # sent by start_call(), not yet awaited
        self._call_task: asyncio.Task[Any] | None = None  # the task awaiting call()
        self._deadline = 0.0  # loop time the running call must end by
        self._timer: asyncio.TimerHandle | None = None  # the runner's one call timer
        self._timer_when = 0.0
        self._expired: asyncio.Task[Any] | None = None  # a call task the timer cancelled
        self._cancelling = 0  # that task's cancel requests before the timer's
        self.stray_frames = 0
        """Stray frames dropped and not yet taken by :meth:`take_stray_frames`."""

    # -- state ----------------------------------------------------------------------------

    @property
    def call_id(self) -> int:
        """The id of the latest call started (0 before the first call)."""
        return self._protocol.call_id

    @property
    def ready(self) -> Message:
        return self._protocol.ready

    @property
    def broken(self) -> bool:
        """The runner is unusable (it broke a limit or the protocol, or its stream ended)."""
        return self._protocol.broken or self._lost

    @property
    def retire_reason(self) -> str | None:
        """Why the runner must be replaced before its next call (None while it may serve)."""
        if self.broken:
            return "crashed"
        return self._protocol.retire_reason

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._protocol.receive_data(data)
        except Exception as error:  # the pure protocol promises never to raise; be sure
            log.exception("%s: the runner protocol failed", self._label)
            self._protocol.abandon("crashed", f"{self._label}: internal error: {error}")
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._transport = None
        self._stop_timer()
        self._wakeup()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the Sandbox operations -------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> Message:
        """Wait for the runner's ``ready`` frame (its first)."""
        try:
            async with asyncio.timeout(timeout):
                finished = await self._finished(None, None)
        except TimeoutError:
            raise self._abandon(
                "unavailable", f"{self._label} did not start within {timeout:g} s"
            ) from None
        if finished.error is not None:
            raise SandboxError(
                "unavailable", f"{self._label} failed to start: {finished.error}"
            ) from None
        return cast(Message, finished.value)

    async def load(self, actor: ActorSource, timeout: float) -> Mapping[str, JSON]:
        """Send the script; return the metadata the runner found."""
        self._actor = actor.key
        self._protocol.send_load(actor)
        self._pump()
        try:
            async with asyncio.timeout(timeout):
                await self._drain()
                finished = await self._finished(None, None)
        except TimeoutError:
            raise self._abandon(
                "load_error", f"loading {actor.filename} took longer than {timeout:g} s"
            ) from None
        if finished.error is not None:
            raise finished.error
        return cast(Mapping[str, JSON], finished.value)

    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        """Run the loaded actor once and return its outputs (see ``Sandbox.call``).

        The time limit covers everything the call awaits (its events, the state store,
        pushes to a slow client), as ``asyncio.timeout`` would, but with one timer per
        runner instead of one per call (:meth:`_arm_deadline`).
        """
        if self._started is context:
            self._started = None  # already sent by start_call(): its events may be queued
        else:
            if self.broken:
                raise SandboxError("crashed", f"{self._label} is no longer usable")
            self._events.clear()
            self._protocol.send_call(context)
            self._sink = events
            self._pump()
        loop = self._loop
        if loop is None:  # looked up once: get_running_loop() costs a getpid(2)
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._call_task = task
        self._arm_deadline(loop, loop.time() + timeout)
        try:
            if self._writable is not None and not self._writable.done():
                await self._writable
            finished = await self._finished(state, events)
        except asyncio.CancelledError:
            if self._expired is task and task.uncancel() <= self._cancelling:
                raise self._abandon(
                    "timeout", f"the call ran longer than {timeout:g} s and was stopped"
                ) from None
            raise
        finally:
            self._sink = None
            self._call_task = None
            self._expired = None
        if finished.error is not None:
            raise finished.error
        return cast(dict[str, JSON], finished.value)

    def start_call(self, context: CallContext, events: EventSink) -> bool:
        """Send the call frame now; :meth:`call` with the same ``context`` then waits
        for it (its time limit starts there). False (nothing sent) when the runner is
        broken or a call was already started and not yet awaited."""
        if self.broken or self._started is not None or self._sink is not None:
            return False
        self._events.clear()
        self._protocol.send_call(context)
        self._sink = events
        self._started = context
        self._pump()
        return True

    def _arm_deadline(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Set the running call's deadline; the runner's one timer fires at or before it.

        Calls last far less than their limit, so the timer armed for an earlier call is
        usually still pending and due earlier: it is kept and, when it fires, re-armed
        for the deadline of the call running then (:meth:`_deadline_passed`).
        """
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_when > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_when = deadline
            self._timer = loop.call_at(deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        """The timer fired: cancel the running call if its deadline has come (the call
        turns that into a ``timeout``), re-arm for a later deadline, or rest."""
        self._timer = None
        task = self._call_task
        if task is None or self._loop is None:
            return
        if self._loop.time() >= self._deadline:
            self._expired = task
            self._cancelling = task.cancelling()
            task.cancel()
        else:
            self._timer_when = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._deadline_passed)

    async def on_capture(self, data: bytes) -> None:
        """Raw bytes the runner's processes wrote to fd 1/2 (the backend's capture stream).

        They count against the running call's output cap and become its log events;
        outside a call they are dropped and counted. ``flush_side_channel`` (given by the
        backend) is awaited when the call's last frame arrives, to deliver such bytes still
        queued before the call ends.
        """
        entry = self._protocol.receive_capture(data)
        self._pump()
        sink = self._sink
        if entry is None or sink is None:
            return
        try:
            await sink.log(entry.level, entry.message)
        except Exception as error:
            self._protocol.side_failure(error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_transport(self) -> None:
        """Close the channel to the runner (the backend ends the process itself)."""
        self._stop_timer()
        if not self._protocol.broken:
            self._protocol.abandon("crashed", f"{self._label} was closed")
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()

    # -- internals ----------------------------------------------------------------------------

    async def _finished(self, state: StateHandler | None, sink: EventSink | None) -> Finished:
        """Handle the running operation's events until it ends."""
        protocol = self._protocol
        events = self._events
        while True:
            event = events.popleft() if events and not self._reading_paused else None
            if event is None:
                event = await self._next_event()
            if isinstance(event, Finished):
                return event
            if isinstance(event, Output):
                if sink is not None:
                    try:
                        await sink.output(event.port, event.data)
                    except Exception as error:
                        protocol.side_failure(error)
            elif isinstance(event, Log):
                if sink is None:
                    log.info("%s (load): %s", self._actor, event.message)
                else:
                    try:
                        await sink.log(event.level, event.message)
                    except Exception as error:
                        protocol.side_failure(error)
            elif isinstance(event, StateRequest):
                if state is not None:
                    await self._answer_state(event, state)
            elif isinstance(event, CallEnding):
                if self._flush_side_channel is not None:
                    await self._flush_side_channel()
                protocol.finish_call()
            self._pump()
            if self._writable is not None and not self._writable.done():
                await self._writable

    async def _answer_state(self, request: StateRequest, state: StateHandler) -> None:
        key = request.key
        try:
            value: Any = None
            if request.op == "get":
                value = await state.get(key, request.value)
            elif request.op == "set":
                await state.set(key, request.value)
            elif request.op == "delete":
                await state.delete(key)
            else:
                value = await state.increment(key, request.by)
        except Exception as error:
            failure = error if isinstance(error, SandboxError) else SandboxError(
                "state_error", str(error) or type(error).__name__
            )
            self._protocol.fail_state(request, failure)
            return
        self._protocol.answer_state(request, value)

    async def _next_event(self) -> Event:
        while not self._events:
            if self._lost:
                kind, detail = await self._death_report()
                self._protocol.receive_eof(SandboxError(kind, detail))
                self._pump()
                if not self._events:
                    raise SandboxError(kind, detail)
                break
            loop = self._loop
            if loop is None:  # looked up once: get_running_loop() costs a getpid(2)
                loop = self._loop = asyncio.get_running_loop()
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        event = self._events.popleft()
        if self._reading_paused and len(self._events) < _PAUSE_AT // 2:
            self._reading_paused = False
            if self._transport is not None and not self._protocol.broken:
                self._transport.resume_reading()
        return event

    def _pump(self) -> None:
        """Take the protocol's events and bytes: strays logged, the rest queued; write."""
        protocol = self._protocol
        received = protocol.events_received()
        if received:
            queue = self._events
            for event in received:
                if type(event) is Stray:
                    self._stray(event)
                else:
                    queue.append(event)
            if queue:
                self._wakeup()
            self._flow_control()
        data = protocol.data_to_send()
        if data and self._transport is not None:
            try:
                self._transport.write(data)
            except Exception as error:  # a closed transport: the runner is gone
                log.debug("%s: write failed: %s", self._label, error)

    def _flow_control(self) -> None:
        """Pause reading when events pile up, or for good once a retired runner is idle."""
        transport = self._transport
        if transport is None or self._reading_paused:
            return
        retired = self._protocol.retire_reason is not None
        if retired:
            self._note_retirement()
        if len(self._events) >= _PAUSE_AT or (retired and self._sink is None):
            # Nothing will read a retired runner's chatter: let it block instead.
            self._reading_paused = True
            transport.pause_reading()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _drain(self) -> None:
        writable = self._writable
        if writable is not None and not writable.done():
            await writable

    def _stray(self, event: Stray) -> None:
        self.stray_frames += 1
        self._strays_seen += 1
        if self._strays_seen <= _STRAY_LOGGED:
            log.warning(
                "actor %s (%s): dropped %s of call %s that arrived outside its call: %s",
                self._actor,
                self._label,
                event.what,
                event.call,
                event.detail,
            )
        elif self._strays_seen == _STRAY_LOGGED + 1:
            log.warning(
                "actor %s (%s): more frames outside their calls; counting them silently",
                self._actor,
                self._label,
            )

    def _note_retirement(self) -> None:
        reason = self._protocol.retire_reason
        if reason is not None and not self._retire_logged and not self._protocol.broken:
            self._retire_logged = True
            log.warning("actor %s (%s) will be replaced: %s", self._actor, self._label, reason)

    def _abandon(self, kind: ErrorKind, message: str) -> SandboxError:
        self._events.clear()
        return self._protocol.abandon(kind, message)

    def take_stray_frames(self) -> int:
        """Stray frames counted since the last call of this method (for metrics)."""
        count, self.stray_frames = self.stray_frames, 0
        return count
