"""A container's attached stdin/stdout as an asyncio (StreamReader, StreamWriter) pair.

The Docker backend talks to the runner over the container's own stdin/stdout, attached
through the engine's ``/containers/{id}/attach`` endpoint (no bind mounts, so the same
images work when the control plane itself runs in a container). Without a TTY the engine
multiplexes the output: every chunk is preceded by an 8-byte header (stream type, three
zero bytes, big-endian payload length). :class:`StdStreamDemuxer` undoes that as a
sans-I/O parser; :func:`open_attached_streams` connects the hijacked socket to the runner client
(an asyncio protocol), which sees the plain stdout byte stream.

The engine copies the container's stdout and stderr in separate goroutines, so bytes a
script wrote raw to fd 1/2 (the stderr stream) may arrive after the call's result frame
(stdout). Runners started with ``--end-marker`` therefore write :func:`end_marker` to fd 2
right before each call's final frame; :class:`EndMarkerScanner` finds those markers in the
stderr stream so the backend can wait for them and deliver what came before to the call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from ...errors import ProtocolError

HEADER = struct.Struct(">BxxxL")
STDIN, STDOUT, STDERR = 0, 1, 2
STDERR_HIGH_WATER = 1024 * 1024
MARKER_PREFIX = b"\x00msb-end:"
_MARKER = re.compile(rb"\x00msb-end:(\d{1,20})\x00\n")
_MAX_PARTIAL = len(MARKER_PREFIX) + 20 + 1

log = logging.getLogger(__name__)


class DemuxError(ProtocolError, ValueError):
    """The attach stream does not follow the engine's multiplexing format."""


class StdStreamDemuxer:
    """Splits the engine's multiplexed attach stream into (stream type, payload) chunks."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every chunk completed by them, in order."""
        self._buffer += data
        chunks: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            stream, length = HEADER.unpack_from(self._buffer)
            if stream not in (STDIN, STDOUT, STDERR):
                raise DemuxError(f"unknown stream type {stream} in the attach stream")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            chunks.append((stream, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return chunks

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole chunk."""
        return len(self._buffer)


def end_marker(call_id: int) -> bytes:
    """The line a runner started with ``--end-marker`` writes to fd 2 as call ``call_id`` ends."""
    return MARKER_PREFIX + str(call_id).encode("ascii") + b"\x00\n"


def _is_partial_marker(tail: bytes) -> bool:
    """Whether ``tail`` is the beginning of a marker (so may be completed by later bytes)."""
    if len(tail) <= len(MARKER_PREFIX):
        return MARKER_PREFIX.startswith(tail)
    if not tail.startswith(MARKER_PREFIX):
        return False
    digits = tail[len(MARKER_PREFIX) :]
    if digits.endswith(b"\x00"):
        digits = digits[:-1]
    return 0 < len(digits) <= 20 and digits.isdigit()


class EndMarkerScanner:
    """Splits a stderr stream into text and end-of-call markers, in order (sans-I/O).

    A marker split across chunks is held back until it is complete (bytes that only look
    like the start of one go out with the next chunk).
    """

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> list[bytes | int]:
        """Add received bytes; return the text (bytes) and call ids (int) they complete."""
        if self._held:
            data, self._held = self._held + data, b""
        if b"\x00" not in data:
            return [data] if data else []
        parts: list[bytes | int] = []
        start = 0
        for match in _MARKER.finditer(data):
            if match.start() > start:
                parts.append(data[start : match.start()])
            parts.append(int(match.group(1)))
            start = match.end()
        nul = data.find(b"\x00", max(start, len(data) - _MAX_PARTIAL))
        while nul >= 0:  # hold back the longest tail that may still become a marker
            if _is_partial_marker(data[nul:]):
                self._held = data[nul:]
                data = data[:nul]
                break
            nul = data.find(b"\x00", nul + 1)
        if len(data) > start:
            parts.append(data[start:])
        return parts


class _DemuxingProtocol(asyncio.Protocol):
    """Passes stdout payloads to the target protocol and stderr payloads to a pump task.

    Stderr is buffered up to :data:`STDERR_HIGH_WATER` bytes; above that the socket stops
    being read until the consumer has caught up, so a script flooding its stderr slows
    itself down instead of filling the control plane's memory. The target may pause and
    resume reading too (through the transport this protocol hands it).
    """

    def __init__(
        self,
        target: asyncio.Protocol,
        on_stderr: Callable[[bytes], Awaitable[None]] | None,
    ) -> None:
        self._attach_demuxer = StdStreamDemuxer()
        self._attach_on_stderr = on_stderr
        self._attach_target = target
        self._attach_stderr = bytearray()
        self._attach_stderr_ready = asyncio.Event()
        self._attach_closed = False
        self._attach_paused = False
        self._attach_transport: asyncio.Transport | None = None
        self.pump: asyncio.Task[None] | None = None
        if on_stderr is not None:
            self.pump = asyncio.get_running_loop().create_task(self._pump(on_stderr))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._attach_transport = cast(asyncio.Transport, transport)
        self._attach_target.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        try:
            chunks = self._attach_demuxer.feed(data)
        except DemuxError as error:
            log.warning("closing a container's attach stream: %s", error)
            if self._attach_transport is not None:
                self._attach_transport.close()
            return
        for stream, payload in chunks:
            if stream == STDOUT:
                self._attach_target.data_received(payload)
            elif stream == STDERR and self._attach_on_stderr is not None and payload:
                self._attach_stderr += payload
                self._attach_stderr_ready.set()
        if (
            len(self._attach_stderr) > STDERR_HIGH_WATER
            and not self._attach_paused
            and self._attach_transport
        ):
            self._attach_paused = True
            self._attach_transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._attach_closed = True
        self._attach_stderr_ready.set()
        self._attach_target.connection_lost(exc)

    def pause_writing(self) -> None:
        self._attach_target.pause_writing()

    def resume_writing(self) -> None:
        self._attach_target.resume_writing()

    async def _pump(self, consumer: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            await self._attach_stderr_ready.wait()
            self._attach_stderr_ready.clear()
            if self._attach_stderr:
                data = bytes(self._attach_stderr)
                self._attach_stderr.clear()
                try:
                    await consumer(data)
                except Exception:  # a consumer failure must not stop the pump
                    log.exception("stderr consumer failed")
            if (
                self._attach_paused
                and self._attach_transport is not None
                and not self._attach_closed
            ):
                self._attach_paused = False
                self._attach_transport.resume_reading()
            if self._attach_closed and not self._attach_stderr:
                return


async def open_attached_streams(
    sock: socket.socket,
    target: asyncio.Protocol,
    *,
    on_stderr: Callable[[bytes], Awaitable[None]] | None = None,
) -> asyncio.BaseTransport:
    """Connect ``target`` to a hijacked attach socket: its writes go to the container's
    stdin, and it receives the container's stdout, demultiplexed.

    ``on_stderr`` receives the container's stderr in order, from a task of its own.
    Closing the transport closes the socket; with ``stdin_once`` the engine then closes
    the container's stdin, so the runner sees end of input and exits.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    protocol = _DemuxingProtocol(target, on_stderr)
    try:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        if protocol.pump is not None:
            protocol.pump.cancel()
        raise
    return transport
