"""The control plane's side of the runner protocol, as a pure state machine (sans I/O).

One :class:`RunnerProtocol` per runner. Bytes go in (:meth:`~RunnerProtocol.receive_data`
for the runner's channel, :meth:`~RunnerProtocol.receive_capture` for what it wrote raw to
fd 1/2, :meth:`~RunnerProtocol.receive_eof`), frames to write come out
(:meth:`~RunnerProtocol.data_to_send`), and what happened comes out as events
(:meth:`~RunnerProtocol.events_received`). It never awaits, sleeps or touches a socket, so
tests drive it with bytes, and :mod:`.runner_client` is a thin asyncio shell around it (as
``websockets``' ``protocol.py`` is to its ``asyncio/`` package). The frames are those of
:mod:`.frames`; every frame that belongs to a call carries that call's id as ``"call"``.

The decisions made here:

* **Routing.** A frame of the running call becomes an event of that call. Anything else (a
  frame of a call that has already answered, or with no call, or capture bytes while no
  call runs) is *stray*: dropped, reported as a :class:`Stray` event (the shell logs it
  with the actor's name and counts it), never shown to another call. A runner that had an
  uncaught exception outside its call, whose call left processes running, or that sent
  more than :data:`STRAY_LIMIT` stray frames is marked for retirement
  (:attr:`RunnerProtocol.retire_reason`): the pool replaces it before its next call.
* **Output accounting.** Output, log and result frames of a call, and the bytes it wrote
  raw, count against ``max_output_bytes`` as they arrive; a frame announced larger than
  what is left fails the call before its body is read.
* **State requests.** Checked (operation, key, ``by``, ``value``) before the shell sees
  them; a malformed one is answered with an error and fails the call as ``state_error``.
* **Runner errors to kinds.** ``error`` frames map to :data:`RUNNER_KINDS`; a broken stream
  is ``crashed``, an oversized one ``output_too_large``; values that are not valid Unicode
  or nest deeper than :data:`~reflow_microsandbox.jsonlimits.MAX_VALUE_DEPTH` fail the call
  as ``script_error`` with a message that says so.

Nothing a runner sends can raise out of this module: every input ends in an event.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..errors import CallError, SandboxError, StateError
from ..jsonlimits import (
    MAX_STATE_VALUE_BYTES,
    MAX_VALUE_DEPTH,
    depth_message,
    huge_number_message,
    lone_surrogate,
    may_hold_huge_number,
    may_hold_surrogate,
    nesting_exceeds,
    non_finite_path,
    surrogate_message,
)
from ..vocabulary import JSON, ActorSource, CallContext, ErrorKind
from .frames import FrameDecoder, FrameError, FrameTooLarge, Message, decode_body, encode_frame

RUNNER_KINDS: frozenset[str] = frozenset({"script_error", "load_error", "memory", "state_error"})
"""Error kinds a runner may report itself; anything else it claims becomes ``script_error``."""

STATE_OPS: frozenset[str] = frozenset({"get", "set", "delete", "increment"})

STRAY_LIMIT = 100
"""Stray frames (and capture chunks) a runner may send in its life before it is retired."""

FRAME_SLACK = 64 * 1024
"""Room for the envelope around a value as large as the output cap."""

FRAME_DEPTH = MAX_VALUE_DEPTH + 2
"""Deepest frame a runner sends legitimately: a value inside ``outputs`` inside the frame."""


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """``send_output(port, data)`` of the running call."""

    call: int
    port: str
    data: JSON


@dataclass(frozen=True, slots=True)
class Log:
    """A log line: of the running call, or (``call`` None) written while loading."""

    call: int | None
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class StateRequest:
    """A checked state request of the running call; answer it with ``answer_state``."""

    call: int
    request_id: int
    op: str
    key: str
    value: JSON = None
    by: int | float = 1


@dataclass(frozen=True, slots=True)
class CallEnding:
    """The call's last frame arrived: deliver what is still queued on the side channel
    (its raw fd 1/2 bytes), then call :meth:`RunnerProtocol.finish_call`."""

    call: int


@dataclass(frozen=True, slots=True)
class Finished:
    """An operation (start, load or call) ended: ``value`` on success, else ``error``."""

    value: Any = None
    error: CallError | None = None


@dataclass(frozen=True, slots=True)
class Stray:
    """A frame or capture chunk that arrived outside its call and was dropped."""

    call: int | None
    what: str
    detail: str


Event = Output | Log | StateRequest | CallEnding | Finished | Stray


class Phase(enum.Enum):
    STARTING = "starting"  # waiting for "ready"
    IDLE = "idle"  # ready (and maybe loaded), no operation running
    LOADING = "loading"
    CALLING = "calling"
    ENDING = "ending"  # the call's last frame came; waiting for finish_call()
    BROKEN = "broken"  # unusable: the backend must dispose of the runner


@dataclass(slots=True)
class _Call:
    call_id: int
    used: int = 0
    side_failure: CallError | None = None
    outcome: Finished | None = None


class RunnerProtocol:
    """The runner protocol of one runner, without I/O; see the module docstring.

    ``max_output_bytes`` caps what one call may stream (bytes, frame headers included);
    ``label`` names the runner in error messages.
    """

    def __init__(self, max_output_bytes: int, label: str = "runner") -> None:
        self.max_output = max_output_bytes
        # A state value travels in one frame within the call's budget, and a store takes
        # at most MAX_STATE_VALUE_BYTES: runners refuse larger ones (state_error).
        room = max_output_bytes - min(FRAME_SLACK, max_output_bytes // 2)
        self.state_value_limit = min(MAX_STATE_VALUE_BYTES, room)
        self.label = label
        self.phase = Phase.STARTING
        self.ready: Message = {}
        self.retire_reason: str | None = None
        self.stray_count = 0
        self._decoder = FrameDecoder(max_output_bytes + FRAME_SLACK)
        self._events: list[Event] = []
        self._outgoing: list[bytes] = []
        self._call: _Call | None = None
        self._last_call_id = 0
        self._loading = False

    # -- state ----------------------------------------------------------------------------

    @property
    def call_id(self) -> int:
        """The id of the latest call started (0 before the first)."""
        return self._last_call_id

    @property
    def broken(self) -> bool:
        return self.phase is Phase.BROKEN

    @property
    def usable(self) -> bool:
        """Neither broken nor marked for retirement."""
        return self.phase is not Phase.BROKEN and self.retire_reason is None

    # -- outputs --------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """Events since the last call, in order (iterate at once; do not keep the list)."""
        events = self._events
        if events:
            self._events = []
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write to the runner since the last call (b"" when none)."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    # -- commands from the shell ----------------------------------------------------------

    def send_load(self, actor: ActorSource) -> None:
        """Ask the runner to load ``actor`` (once, after ``Ready``)."""
        if self.phase is not Phase.IDLE or self._loading:
            self._refuse_operation("load")
            return
        self.phase = Phase.LOADING
        self._loading = True
        self._outgoing.append(
            encode_frame(
                {
                    "type": "load",
                    "source": actor.source,
                    "filename": actor.filename,
                    "name": actor.name,
                    "namespace": actor.namespace,
                }
            )
        )

    def send_call(self, context: CallContext) -> int:
        """Start a call; returns its id. A ``Finished`` event ends it (after ``CallEnding``)."""
        self._last_call_id += 1
        call_id = self._last_call_id
        if self.phase is not Phase.IDLE:
            self._refuse_operation("call")
            return call_id
        try:
            frame = encode_frame(
                {
                    "type": "call",
                    "call": call_id,
                    "context": {
                        "actor_id": context.actor_id,
                        "namespace": context.namespace,
                        "payload": dict(context.payload),
                        "config": dict(context.config),
                        "timestamp": context.timestamp,
                        "state_value_limit": self.state_value_limit,
                    },
                }
            )
        except (ValueError, TypeError, RecursionError) as error:
            # The input itself is not strict JSON; the runner never saw it.
            self._events.append(
                Finished(error=SandboxError("script_error", f"the call's input is not strict "
                                            f"JSON: {error}"))
            )
            return call_id
        self._call = _Call(call_id)
        self.phase = Phase.CALLING
        self._outgoing.append(frame)
        return call_id

    def answer_state(self, request: StateRequest, value: JSON) -> None:
        """The store answered ``request``; the answer goes out while its call runs."""
        call = self._call
        if call is None or call.call_id != request.call or self.phase is Phase.BROKEN:
            return
        try:
            frame = encode_frame(
                {
                    "type": "state_result",
                    "call": request.call,
                    "id": request.request_id,
                    "ok": True,
                    "value": value,
                }
            )
        except (ValueError, TypeError, RecursionError) as error:
            self.fail_state(request, StateError(f"stored value: {error}"))
            return
        self._outgoing.append(frame)

    def fail_state(self, request: StateRequest, error: BaseException) -> None:
        """The store failed ``request``: the runner gets the error, the call fails at its end."""
        call = self._call
        if call is None or call.call_id != request.call or self.phase is Phase.BROKEN:
            return
        failure = as_state_error(error)
        call.side_failure = call.side_failure or failure
        self._outgoing.append(_state_refusal(request.call, request.request_id, failure.message))

    def side_failure(self, error: BaseException) -> None:
        """Delivering an event of the running call failed: the call fails at its end."""
        if self._call is not None:
            self._call.side_failure = self._call.side_failure or as_state_error(error)

    def finish_call(self) -> None:
        """After ``CallEnding``: end the call with its outcome (a ``Finished`` event)."""
        call = self._call
        if call is None or self.phase is not Phase.ENDING or call.outcome is None:
            return
        outcome = call.outcome
        if call.used > self.max_output:
            outcome = Finished(error=self._too_large())
            self.phase = Phase.BROKEN
        elif call.side_failure is not None:
            outcome = Finished(error=call.side_failure)
        self._end_call(outcome)

    def abandon(self, kind: ErrorKind, message: str) -> SandboxError:
        """The shell gave up on the runner (a timeout, a failed write): it is broken now."""
        error = SandboxError(kind, message)
        self._break(error)
        self._events.clear()
        return error

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the runner's protocol channel."""
        if self.phase is Phase.BROKEN:
            return
        decoder = self._decoder
        decoder.feed(data)
        while not self.broken:
            call = self._call
            if call is not None and self.phase is Phase.CALLING:
                pending = decoder.pending_frame_size()
                if pending is not None and call.used + pending > self.max_output:
                    self._break(self._too_large())
                    return
            try:
                body = decoder.next_body()
            except FrameTooLarge:
                self._break(self._too_large() if self._call else self._violation("a frame "
                            "larger than the cap"))
                return
            except FrameError as error:
                self._break(self._violation(str(error)))
                return
            if body is None:
                return
            self._receive_frame(body, decoder.last_frame_size)

    def receive_capture(self, data: bytes) -> Log | None:
        """Bytes the runner's processes wrote raw to fd 1/2.

        They carry no call id: they belong to the call running when they arrive (until
        :meth:`finish_call`). Returns the ``Log`` to deliver to that call, or None when
        they were dropped (no call, or the call went over its cap: then a ``Finished``
        event with ``output_too_large`` is queued).
        """
        call = self._call
        if call is None or self.phase not in (Phase.CALLING, Phase.ENDING):
            if data:
                self._stray(None, "capture", f"{len(data)} bytes written to fd 1/2 outside a call")
            return None
        call.used += len(data)
        if call.used > self.max_output:
            if self.phase is Phase.CALLING:
                self._break(self._too_large())
            return None
        text = data.decode("utf-8", "replace").rstrip("\n")
        return Log(call.call_id, "info", text)

    def receive_eof(self, error: CallError) -> None:
        """The channel ended; ``error`` says why (the backend's death report)."""
        self._break(error)

    # -- frames ---------------------------------------------------------------------------

    def _receive_frame(self, body: bytes, size: int) -> None:
        too_deep = False
        if body.count(b"[") + body.count(b"{") > FRAME_DEPTH:  # cheap first: usually not
            too_deep = nesting_exceeds(body, FRAME_DEPTH)
            if too_deep and nesting_exceeds(body, 2 * FRAME_DEPTH):  # no runner sends this
                self._break(self._violation(f"a frame nested deeper than {2 * FRAME_DEPTH} "
                                            "levels"))
                return
        try:
            message = decode_body(body)
        except FrameError as error:
            self._break(self._violation(str(error)))
            return
        surrogate = None
        if b"\\u" in body and may_hold_surrogate(body):
            surrogate = lone_surrogate(message)
        # A script can write frames itself, skipping the runner's checks.
        huge = non_finite_path(message) if may_hold_huge_number(body) else None
        kind = message["type"]
        phase = self.phase
        if phase is Phase.STARTING:
            if kind != "ready":
                self._break(SandboxError("unavailable", f"{self.label} sent {kind!r} first"))
                return
            self.ready = message
            self.phase = Phase.IDLE
            self._events.append(Finished(value=message))
            return
        if kind == "ready":
            self._break(self._violation("a second 'ready'"))
            return
        if phase is Phase.LOADING and kind in ("loaded", "error", "log"):
            self._receive_load_frame(message, surrogate)
            return
        call = self._call
        frame_call = message.get("call")
        if call is None or phase is not Phase.CALLING or frame_call != call.call_id:
            self._receive_stray(message, frame_call)
            return
        if kind == "log":
            call.used += size
            if call.used > self.max_output:
                self._break(self._too_large())
                return
            text = _text(message.get("message"))
            self._events.append(Log(call.call_id, _text(message.get("level"), "info"), text))
        elif kind == "output":
            call.used += size
            if call.used > self.max_output:
                self._break(self._too_large())
                return
            port = message.get("port")
            bad = surrogate or too_deep or huge
            if bad or not isinstance(port, str) or "data" not in message:
                self._fail_call_now(self._bad_value(f"send_output({port!r}) value", surrogate,
                                                    too_deep, message, huge))
                return
            self._events.append(Output(call.call_id, port, message["data"]))
        elif kind == "state":
            if surrogate or too_deep or huge:
                failure = self._bad_value("a state value", surrogate, too_deep, message, huge)
                self._refuse_state(call, message, as_state_error(failure))
                return
            self._receive_state(call, message)
        elif kind == "result":
            call.used += size
            outputs = message.get("outputs")
            if call.used > self.max_output:
                self._break(self._too_large())
                return
            if surrogate or too_deep or huge:
                outcome = Finished(error=self._bad_value("the returned value", surrogate,
                                                         too_deep, message, huge))
            else:
                value = outputs if isinstance(outputs, dict) else {"output": outputs}
                outcome = Finished(value=value)
            self._lingering(message)
            self._ending(call, outcome)
        elif kind == "error":
            self._lingering(message)
            self._ending(call, Finished(error=runner_error(message, "script_error")))
        elif kind == "uncaught":
            self._receive_uncaught(call, message)
        else:
            self._break(self._violation(f"an unknown frame type {kind!r}"))

    def _receive_load_frame(self, message: Message, surrogate: str | None) -> None:
        kind = message["type"]
        if kind == "log":
            self._events.append(Log(None, _text(message.get("level"), "info"),
                                    _text(message.get("message"))))
            return
        if kind == "error":
            # A sandbox whose script failed to load is not used again.
            self.phase = Phase.BROKEN
            self._events.append(Finished(error=runner_error(message, "load_error")))
            return
        self.phase = Phase.IDLE
        metadata = message.get("metadata")
        if surrogate or not isinstance(metadata, dict):
            metadata = {}
        self._events.append(Finished(value=metadata))

    def _receive_state(self, call: _Call, message: Message) -> None:
        request_id = message.get("id")
        op = message.get("op")
        key = message.get("key")
        problem = None
        if type(request_id) is not int:
            problem = "a state request without an integer id"
        elif op not in STATE_OPS:
            problem = f"unknown state operation {op!r}"
        elif not isinstance(key, str):
            problem = f"a state key must be a string, not {type(key).__name__}"
        elif op == "set" and "value" not in message:
            problem = "set_state without a value"
        elif op == "increment":
            by = message.get("by", 1)
            if isinstance(by, bool) or not isinstance(by, int | float):
                problem = f"increment_state by {by!r}: not a number"
        if problem is not None:
            self._refuse_state(call, message, StateError(problem))
            return
        assert isinstance(request_id, int) and isinstance(op, str) and isinstance(key, str)
        self._events.append(
            StateRequest(
                call.call_id,
                request_id,
                op,
                key,
                value=message.get("default") if op == "get" else message.get("value"),
                by=message.get("by", 1),
            )
        )

    def _refuse_state(self, call: _Call, message: Message, error: StateError) -> None:
        call.side_failure = call.side_failure or error
        request_id = message.get("id")
        if type(request_id) is int:
            self._outgoing.append(_state_refusal(call.call_id, request_id, error.message))

    def _receive_uncaught(self, call: _Call, message: Message) -> None:
        error = runner_error(message, "script_error")
        if message.get("fatal") is True:
            # Node: after an uncaught exception the process is not safe to go on with.
            self.retire_reason = "an uncaught exception"
            self._ending(call, Finished(error=error))
            return
        text = _text(message.get("traceback")) or error.message
        call.used += len(text)
        self._events.append(Log(call.call_id, "error", f"uncaught exception: {text.rstrip()}"))

    def _receive_stray(self, message: Message, frame_call: object) -> None:
        kind = message["type"]
        call = frame_call if type(frame_call) is int else None
        if kind == "uncaught":
            self.retire_reason = self.retire_reason or "an uncaught exception outside its call"
            detail = runner_error(message, "script_error").message
        elif kind in ("log", "output", "state", "result", "error"):
            detail = _text(message.get("message") if kind in ("log", "error") else
                           message.get("port") if kind == "output" else message.get("op"))
        else:
            self._break(self._violation(f"a {kind!r} frame outside any operation"))
            return
        self._stray(call, kind, detail[:200])

    def _stray(self, call: int | None, what: str, detail: str) -> None:
        self.stray_count += 1
        if self.stray_count > STRAY_LIMIT and self.retire_reason is None:
            self.retire_reason = f"more than {STRAY_LIMIT} frames outside its calls"
        self._events.append(Stray(call, what, detail))

    def _lingering(self, message: Message) -> None:
        if message.get("lingering") is True and self.retire_reason is None:
            self.retire_reason = "its call left processes running"

    # -- ending -----------------------------------------------------------------------------

    def _ending(self, call: _Call, outcome: Finished) -> None:
        call.outcome = outcome
        self.phase = Phase.ENDING
        self._events.append(CallEnding(call.call_id))

    def _fail_call_now(self, error: CallError) -> None:
        call = self._call
        if call is None:
            return
        # The runner is still inside the call: it cannot be reused.
        self.retire_reason = self.retire_reason or "a call failed mid-way"
        self._break(error)

    def _end_call(self, outcome: Finished) -> None:
        self._call = None
        if self.phase is not Phase.BROKEN:
            self.phase = Phase.IDLE
        self._events.append(outcome)

    def _break(self, error: CallError) -> None:
        """The runner is unusable; the running operation (if any) ends with ``error``."""
        if self.phase is Phase.BROKEN:
            return
        waiting = self.phase in (Phase.STARTING, Phase.LOADING, Phase.CALLING, Phase.ENDING)
        self.phase = Phase.BROKEN
        self._call = None
        if waiting:
            self._events.append(Finished(error=error))

    def _refuse_operation(self, what: str) -> None:
        if self.phase is Phase.BROKEN:
            error = SandboxError("crashed", f"{self.label} is no longer usable")
        else:
            error = SandboxError("crashed", f"{self.label} cannot {what} while {self.phase.value}")
        self._events.append(Finished(error=error))

    def _too_large(self) -> SandboxError:
        return SandboxError(
            "output_too_large", f"the call's outputs and logs exceeded {self.max_output} bytes"
        )

    def _violation(self, what: str) -> SandboxError:
        return SandboxError("crashed", f"{self.label} broke the protocol: {what}")

    def _bad_value(
        self, what: str, surrogate: str | None, too_deep: bool, message: Message,
        huge: str | None = None,
    ) -> SandboxError:
        if surrogate is not None:
            return SandboxError("script_error", surrogate_message(what, surrogate))
        if too_deep:
            return SandboxError("script_error", depth_message(what, MAX_VALUE_DEPTH))
        if huge is not None:
            return SandboxError("script_error", f"{what}: {huge_number_message(huge)}")
        return SandboxError("script_error", f"{what}: a malformed {message['type']!r} frame")


# -- helpers --------------------------------------------------------------------------------


def runner_error(message: Mapping[str, Any], default: ErrorKind) -> SandboxError:
    """The :class:`SandboxError` an ``error`` (or ``uncaught``) frame reports."""
    kind = message.get("kind")
    error_kind: ErrorKind = default
    if isinstance(kind, str) and kind in RUNNER_KINDS:
        error_kind = cast(ErrorKind, kind)
    error_type = _text(message.get("error_type"), "Error") or "Error"
    text = _text(message.get("message"))
    return SandboxError(
        error_kind,
        f"{error_type}: {text}" if text else error_type,
        details={
            "type": error_type,
            "message": text,
            "traceback": _text(message.get("traceback")),
        },
    )


def as_state_error(error: BaseException) -> StateError:
    """``error`` as ``state_error``: what a failed state request or push fails a call with."""
    if isinstance(error, StateError) and error.kind == "state_error":
        return error
    message = error.message if isinstance(error, CallError) else str(error)
    return StateError(message or type(error).__name__)


def _state_refusal(call_id: int, request_id: int, message: str) -> bytes:
    return encode_frame(
        {"type": "state_result", "call": call_id, "id": request_id, "ok": False,
         "error": _clean(message)}
    )


def _text(value: object, default: str = "") -> str:
    """A frame's text field as clean str (lone surrogates replaced)."""
    if value is None:
        return default
    return _clean(value if isinstance(value, str) else str(value))


def _clean(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
