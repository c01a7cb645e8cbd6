"""The runner wire format: length-prefixed JSON frames, as a sans-I/O codec.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON, always an object with a ``"type"`` key. The control plane and the
runners inside the sandboxes (``runners/python_runner.py``, ``runners/node_runner.js``,
which carry their own copies of this framing because they may import nothing of
ours) speak it over the runner's private pipe. :class:`FrameDecoder` takes bytes
and returns messages; :func:`encode_frame` turns a message into bytes. Neither does
I/O, so tests drive them directly and both backends share them.

Every frame that belongs to a call carries its id as ``"call"`` (an int the control
plane picks, increasing per runner), so a frame that arrives after its call answered (from
a thread, a timer, an unawaited task) is recognized and dropped instead of reaching the
next call. Messages, control plane -> runner:

``{"type": "load", "source": str, "filename": str, "name": str, "namespace": str}``
    Load the actor's script (once per sandbox).
``{"type": "call", "call": int, "context": {...}}``
    Run ``process(context)`` once; the context has ``actor_id``, ``namespace``,
    ``payload``, ``config``, ``timestamp``.
``{"type": "state_result", "call": int, "id": int, "ok": true, "value": any}``
    The answer to a ``state`` request of the running call, or on failure
    ``{"type": "state_result", "call": int, "id": int, "ok": false, "error": str}``.

Messages, runner -> control plane:

``{"type": "ready", "language": str, "pid": int}``
    The runner started and waits for ``load`` (sent once, first).
``{"type": "loaded", "metadata": object}``
    The script loaded; ``metadata`` is what its ``@actor`` / ``metadata`` declared.
``{"type": "output", "call": int, "port": str, "data": any}``
    ``send_output`` during a call: forwarded at once.
``{"type": "log", "call": int|null, "level": str, "message": str}``
    ``log(...)``, and anything the script wrote to stdout/stderr (``call`` is the call
    the writing code belongs to: null while loading).
``{"type": "state", "call": int, "id": int, "op": "get"|"set"|"delete"|"increment",``
``"key": str, ...}``
    A state request (``default`` for get, ``value`` for set, ``by`` for increment).
``{"type": "result", "call": int, "outputs": object, "lingering": bool}``
    The call finished; ``outputs`` maps port -> value. ``lingering`` (optional) says the
    call left child processes running.
``{"type": "error", "call": int|null, "kind": str, "error_type": str, "message": str,``
``"traceback": str, "lingering": bool}``
    The load (``call`` null) or call failed: ``kind`` is ``load_error``,
    ``script_error``, ``memory`` or ``state_error`` (see ``vocabulary.ErrorKind``); the
    traceback is trimmed to the user's code.
``{"type": "uncaught", "call": int|null, "fatal": bool, "error_type": str,``
``"message": str, "traceback": str}``
    An exception nothing caught (a thread's, a timer's, an unhandled rejection), with
    the call the failing code belongs to. ``fatal`` (Node) means the runner abandoned
    that call.

The decisions about these frames (routing, output cap, state checks, error kinds) are
made in :mod:`.runner_protocol`.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import ProtocolError
from ..vocabulary import STRICT_JSON_DECODER, STRICT_JSON_ENCODER

Message = dict[str, Any]

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class FrameError(ProtocolError):
    """The byte stream is not a valid frame sequence; the connection is unusable."""


class FrameTooLarge(FrameError):
    """A frame announced a length above the decoder's cap."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte cap")
        self.size = size
        self.limit = limit


# One encoder and one decoder for every frame (the project's strict pair).
_ENCODER = STRICT_JSON_ENCODER
_DECODER = STRICT_JSON_DECODER
_SCAN: Any = getattr(_DECODER, "scan_once")  # noqa: B009 (typeshed lacks it)


def encode_frame(message: Message) -> bytes:
    """Serialize one message as strict JSON (NaN/Infinity raise ``ValueError``, a lone
    surrogate ``UnicodeEncodeError``)."""
    data = _ENCODER.encode(message).encode("utf-8")
    return HEADER.pack(len(data)) + data


def decode_body(body: bytes) -> Message:
    """Parse one frame body into a message (strict JSON, an object with a type)."""
    try:
        text = body.decode("utf-8")
        try:  # the scanner alone: runners send no whitespace around the object
            message, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            message = _DECODER.decode(text)  # the exact answer, or the exact error
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FrameError(f"frame body is not valid JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("frame body is not an object with a string 'type'")
    return message


class FrameDecoder:
    """Accumulates bytes and hands out complete messages, refusing frames over the cap.

    Use: ``feed(data)``, then call ``next_message()`` until it returns None. The cap
    is checked on the header alone, so a runner announcing a huge frame costs the
    control plane four bytes, never the frame itself. Messages before a bad frame
    are still handed out in order; the bad frame raises, and so does every later call.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._offset = 0
        self._broken: FrameError | None = None
        # Size in bytes (header included) of the message ``next_message`` returned last.
        self.last_frame_size = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as a message."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive.

        Raises :class:`FrameTooLarge` or :class:`FrameError` when the stream is invalid.
        """
        body = self.next_body()
        if body is None:
            return None
        try:
            return decode_body(body)
        except FrameError as error:
            self._broken = error
            raise

    def next_body(self) -> bytes | None:
        """The next complete frame's body, undecoded, or None until more bytes arrive.

        Raises :class:`FrameTooLarge` when a header announces more than the cap.
        """
        if self._broken is not None:
            raise self._broken
        buffer = self._buffer
        offset = self._offset
        if len(buffer) - offset < HEADER_SIZE:
            return None
        (size,) = HEADER.unpack_from(buffer, offset)
        if size > self.max_frame_size:
            self._broken = FrameTooLarge(size, self.max_frame_size)
            raise self._broken
        end = offset + HEADER_SIZE + size
        if len(buffer) < end:
            return None
        body = bytes(buffer[offset + HEADER_SIZE : end])
        self._offset = end
        self.last_frame_size = HEADER_SIZE + size
        if end > 65536 and end * 2 > len(buffer):
            del buffer[:end]
            self._offset = 0
        return body

    def pending_frame_size(self) -> int | None:
        """Announced size (header included) of the frame at the head, once its header is in."""
        if len(self._buffer) - self._offset < HEADER_SIZE:
            return None
        (size,) = HEADER.unpack_from(self._buffer, self._offset)
        return HEADER_SIZE + int(size)

    def messages(self, data: bytes) -> list[Message]:
        """``feed(data)`` and return every message now complete (raises like ``next_message``)."""
        self.feed(data)
        result: list[Message] = []
        while (message := self.next_message()) is not None:
            result.append(message)
        return result
