"""The control plane's side of the runner protocol, over an asyncio stream pair.

A thin shell around :mod:`frames`: it sends ``load`` and ``call`` frames, routes
``output`` and ``log`` events to the call's :class:`EventSink`, answers ``state``
requests from its :class:`StateHandler`, and turns whatever ends a call into a
result or a :class:`SandboxError` of the right kind (timeout, output cap, runner
death). Both backends reuse it: bubblewrap over socket pairs, Docker over the
attached container streams. It never kills anything itself: after an error that
``destroys_sandbox`` it is :attr:`broken` and the backend disposes of the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .base import JSON, ActorSource, CallContext, ErrorKind, EventSink, SandboxError, StateHandler
from .frames import FrameDecoder, FrameError, FrameTooLarge, Message, encode_frame

log = logging.getLogger(__name__)

DeathReport = Callable[[], Awaitable[tuple[ErrorKind, str]]]
"""Asked when the runner's stream ended: which kind of death it was, and why."""

_READ_SIZE = 256 * 1024
_RUNNER_KINDS: frozenset[str] = frozenset({"script_error", "load_error", "memory", "state_error"})
_FRAME_SLACK = 64 * 1024  # room for the envelope around a value as large as the cap


class _OutputOverflow(Exception):
    """Raised into the reader when captured stdout/stderr pushed a call past its cap."""


async def _default_death() -> tuple[ErrorKind, str]:
    return "crashed", "the runner exited"


class RunnerClient:
    """Drives one runner: ``wait_ready``, one ``load``, then ``call`` many times."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_output_bytes: int,
        death_report: DeathReport = _default_death,
        flush_side_channel: Callable[[], Awaitable[None]] | None = None,
        label: str = "runner",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_output_bytes + _FRAME_SLACK)
        self._max_output = max_output_bytes
        self._death_report = death_report
        self._flush_side_channel = flush_side_channel
        self._label = label
        self._call_id = 0
        self._in_call = False
        self._events: EventSink | None = None
        self._used = 0
        self._side_failure: SandboxError | None = None
        self.broken = False
        self.ready: Message = {}

    @property
    def call_id(self) -> int:
        """The id of the latest call frame sent (0 before the first call)."""
        return self._call_id

    # -- the Sandbox operations -------------------------------------------------------

    async def wait_ready(self, timeout: float) -> Message:
        """Wait for the runner's ``ready`` frame (its first)."""
        try:
            async with asyncio.timeout(timeout):
                message = await self._next_message()
        except TimeoutError:
            raise self._fail(
                "unavailable", f"{self._label} did not start within {timeout:g} s"
            ) from None
        except SandboxError as error:
            self.broken = True
            raise SandboxError("unavailable", f"{self._label} failed to start: {error}") from None
        if message.get("type") != "ready":
            raise self._fail("unavailable", f"{self._label} sent {message.get('type')!r} first")
        self.ready = message
        return message

    async def load(self, actor: ActorSource, timeout: float) -> Mapping[str, JSON]:
        """Send the script; return the metadata the runner found."""
        await self._send(
            {
                "type": "load",
                "source": actor.source,
                "filename": actor.filename,
                "name": actor.name,
                "namespace": actor.namespace,
            }
        )
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._next_message()
                    kind = message.get("type")
                    if kind == "loaded":
                        metadata = message.get("metadata")
                        return metadata if isinstance(metadata, dict) else {}
                    if kind == "error":
                        raise self._runner_error(message, "load_error")
                    if kind == "log":
                        log.info("%s (load): %s", actor.key, message.get("message"))
        except TimeoutError:
            raise self._fail(
                "load_error", f"loading {actor.filename} took longer than {timeout:g} s"
            ) from None

    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        """Run the loaded actor once and return its outputs (see ``Sandbox.call``)."""
        if self.broken:
            raise SandboxError("crashed", f"{self._label} is no longer usable")
        self._call_id += 1
        call_id = self._call_id
        self._in_call = True
        self._events = events
        self._used = 0
        self._side_failure = None
        try:
            await self._send(
                {
                    "type": "call",
                    "id": call_id,
                    "context": {
                        "actor_id": context.actor_id,
                        "namespace": context.namespace,
                        "payload": dict(context.payload),
                        "config": dict(context.config),
                        "timestamp": context.timestamp,
                    },
                }
            )
            async with asyncio.timeout(timeout):
                return await self._run_call(call_id, state, events)
        except TimeoutError:
            raise self._fail(
                "timeout", f"the call ran longer than {timeout:g} s and was stopped"
            ) from None
        except ValueError as error:  # the payload itself is not strict JSON
            raise SandboxError(
                "script_error", f"the call's input is not strict JSON: {error}"
            ) from None
        finally:
            self._in_call = False
            self._events = None

    async def on_capture(self, data: bytes) -> None:
        """Raw bytes the runner wrote to its fd 1/2: a log event of the running call.

        Outside a call they go to the server log. They count against the call's
        output cap like pushes and logs do. ``flush_side_channel`` (given by the
        backend) is awaited when the call's last frame arrives, to deliver such
        bytes still queued before the call ends.
        """
        text = data.decode("utf-8", "replace")
        events = self._events
        if not self._in_call or events is None:
            log.debug("%s wrote outside a call: %s", self._label, text.rstrip())
            return
        if not self._account(len(data)):
            self._reader.set_exception(_OutputOverflow())
            return
        try:
            await events.log("info", text.rstrip("\n"))
        except Exception as error:
            self._side_failure = self._side_failure or _as_state_error(error)

    def close_transport(self) -> None:
        """Close the stream to the runner (the backend ends the process itself)."""
        self.broken = True
        with contextlib.suppress(Exception):
            self._writer.close()

    # -- internals ----------------------------------------------------------------------

    async def _run_call(
        self, call_id: int, state: StateHandler, events: EventSink
    ) -> dict[str, JSON]:
        while True:
            message = await self._next_message()
            kind = message.get("type")
            if kind == "output":
                self._charge()
                try:
                    await events.output(str(message.get("port")), message.get("data"))
                except Exception as error:
                    self._side_failure = self._side_failure or _as_state_error(error)
            elif kind == "log":
                self._charge()
                try:
                    await events.log(str(message.get("level", "info")), str(message.get("message")))
                except Exception as error:
                    self._side_failure = self._side_failure or _as_state_error(error)
            elif kind == "state":
                await self._answer_state(message, state)
            elif kind in ("result", "error") and message.get("id") == call_id:
                if kind == "result":
                    self._charge()
                if self._flush_side_channel is not None:
                    await self._flush_side_channel()
                    if self._used > self._max_output:
                        raise self._fail("output_too_large", self._too_large_message())
                if self._side_failure is not None:
                    raise self._side_failure
                if kind == "error":
                    raise self._runner_error(message, "script_error")
                outputs = message.get("outputs")
                return outputs if isinstance(outputs, dict) else {"output": outputs}
            # anything else (a late frame of an earlier call) is ignored

    async def _answer_state(self, message: Message, state: StateHandler) -> None:
        request_id = message.get("id")
        op = message.get("op")
        key = str(message.get("key"))
        try:
            value: Any = None
            if op == "get":
                value = await state.get(key, message.get("default"))
            elif op == "set":
                await state.set(key, message.get("value"))
            elif op == "delete":
                await state.delete(key)
            elif op == "increment":
                by = message.get("by", 1)
                if isinstance(by, bool) or not isinstance(by, int | float):
                    raise SandboxError("state_error", f"increment_state by {by!r}: not a number")
                value = await state.increment(key, by)
            else:
                raise SandboxError("state_error", f"unknown state operation {op!r}")
            answer = {"type": "state_result", "id": request_id, "ok": True, "value": value}
            frame = encode_frame(answer)
        except Exception as error:
            failure = _as_state_error(error)
            self._side_failure = self._side_failure or failure
            frame = encode_frame(
                {"type": "state_result", "id": request_id, "ok": False, "error": failure.message}
            )
        await self._write(frame)

    def _account(self, size: int) -> bool:
        self._used += size
        return self._used <= self._max_output

    def _charge(self) -> None:
        if not self._account(self._decoder.last_frame_size):
            raise self._fail("output_too_large", self._too_large_message())

    def _too_large_message(self) -> str:
        return f"the call's outputs and logs exceeded {self._max_output} bytes"

    async def _next_message(self) -> Message:
        decoder = self._decoder
        while True:
            try:
                message = decoder.next_message()
            except FrameTooLarge:
                raise self._fail("output_too_large", self._too_large_message()) from None
            except FrameError as error:
                raise self._fail("crashed", f"{self._label} broke the protocol: {error}") from None
            if message is not None:
                return message
            pending = decoder.pending_frame_size()
            if self._in_call and pending is not None and self._used + pending > self._max_output:
                raise self._fail("output_too_large", self._too_large_message())
            try:
                data = await self._reader.read(_READ_SIZE)
            except _OutputOverflow:
                raise self._fail("output_too_large", self._too_large_message()) from None
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.broken = True
                kind, detail = await self._death_report()
                raise SandboxError(kind, detail)
            decoder.feed(data)

    async def _send(self, message: Message) -> None:
        await self._write(encode_frame(message))

    async def _write(self, frame: bytes) -> None:
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.broken = True
            kind, detail = await self._death_report()
            raise SandboxError(kind, detail) from None

    def _fail(self, kind: ErrorKind, message: str) -> SandboxError:
        self.broken = True
        return SandboxError(kind, message)

    def _runner_error(self, message: Message, default: ErrorKind) -> SandboxError:
        kind = message.get("kind")
        error_kind: ErrorKind = kind if kind in _RUNNER_KINDS else default
        error_type = str(message.get("error_type") or "Error")
        text = str(message.get("message") or "")
        error = SandboxError(
            error_kind,
            f"{error_type}: {text}" if text else error_type,
            details={
                "type": error_type,
                "message": text,
                "traceback": str(message.get("traceback") or ""),
            },
        )
        if error.destroys_sandbox:
            self.broken = True
        return error


def _as_state_error(error: BaseException) -> SandboxError:
    if isinstance(error, SandboxError) and error.kind == "state_error":
        return error
    message = error.message if isinstance(error, SandboxError) else str(error)
    return SandboxError("state_error", message or type(error).__name__)
