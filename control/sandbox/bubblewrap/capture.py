"""The capture pump: what a runner's processes write to fd 1/2, delivered in order.

A bubblewrap sandbox's fd 1/2 lead to a socket pair of their own, so nothing a script
writes can corrupt the protocol channel. Bytes are read synchronously when the socket
turns readable and delivered in order by one task under a lock, which :meth:`drain` also
takes, so a call ends only after all it wrote has been delivered. The last
:data:`TAIL_BYTES` are kept for the death report (e.g. V8's out-of-memory message).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

TAIL_BYTES = 4096


class CapturePump:
    """Reads one capture socket and hands each chunk (bytes) to ``deliver``, in order."""

    def __init__(self, deliver: Callable[[bytes], Awaitable[None]]) -> None:
        self._deliver = deliver
        self._sock: socket.socket | None = None
        self._chunks: list[bytes] = []
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.tail = b""
        """The last bytes read (at most :data:`TAIL_BYTES`)."""

    def start(self, sock: socket.socket) -> None:
        """Watch ``sock`` (the parent's end of the capture pair) from the running loop."""
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)
        self._task = asyncio.create_task(self._pump())

    def _on_readable(self) -> None:
        self.read()
        self._ready.set()

    def read(self) -> None:
        """Read what is queued on the socket now (without delivering it)."""
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                self._sock.close()
                self._sock = None
                return
            self.tail = (self.tail + data)[-TAIL_BYTES:]
            self._chunks.append(data)

    async def _deliver_all(self) -> None:
        async with self._lock:
            while self._chunks:
                await self._deliver(self._chunks.pop(0))

    async def _pump(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._deliver_all()

    async def drain(self) -> None:
        """Deliver what the runner wrote to fd 1/2 before its last frame.

        Those bytes are already queued on the capture socket when the result
        arrives (the runner wrote them first); they belong to the call. They have also
        been read already: the epoll round that reported the result reported the
        capture socket too (or an earlier one did), and its reader callback
        (:meth:`_on_readable`) ran in that round's I/O phase, while the call's coroutine
        resumes from a future only after it. So no read here: almost every call writes
        nothing raw, and an empty read is a syscall and an exception.
        """
        if self._chunks or self._lock.locked():
            # Only then: the lock's acquire and release cost more than the rest of
            # a call's capture handling, and almost every call writes nothing raw.
            await self._deliver_all()

    async def stop(self) -> None:
        """Stop delivering (the sandbox is being closed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def close(self) -> None:
        """Stop watching the socket and close it; idempotent."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
