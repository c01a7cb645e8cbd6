"""The WebSocket JSON-RPC transport (port 5556): moves frames to and from :mod:`..dispatch`.

Framing rules, all from Reflow's client contract:

* Text in, text out. A client that never opts in to zstd only ever gets text frames.
* zstd is opt-in: a client that sends a binary frame (zstd-compressed JSON) or
  connects with ``?compression=zstd`` gets replies and pushes whose JSON exceeds
  ``compression.threshold`` bytes as binary zstd frames; smaller ones stay text.
* Every inbound message is capped at ``server.max_message_size``, after
  permessage-deflate (the library closes with 1009) and after zstd (we close 1009).
* Calls on one connection run concurrently, one task per frame (bounded per
  connection); responses go out when ready. A call's ``output`` pushes are sent, in
  order, before its response.

Draining (:meth:`WsTransport.stop_accepting`, then :meth:`WsTransport.drain`): no new
connection is accepted, and each open one keeps being served until it can be closed
(1001 going away) at a moment its client is waiting for nothing: right after the reply
to its last running call, or once it has been silent for :data:`DRAIN_IDLE_CLOSE`.
Reflow reconnects lazily before its next call when it saw a Close, so through the
balancer that next call lands on another node and no call of a rolling restart is
lost or refused. A frame that crosses the Close on the wire cannot be answered on this
connection any more, so it is not run either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

import zstandard
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from .. import jsonrpc
from ..compression import (
    CompressionError,
    DecompressedTooLarge,
    compress_reply,
    inflate_frame,
    reply_threshold,
)
from ..config import Config
from ..dispatch import Dispatcher
from ..functions.routes import function_route, malformed_function_path
from ..methods import CallScope, FunctionTarget
from ..metrics import Metrics
from ..vocabulary import JSON
from .auth import TokenAuth, query_param

log = logging.getLogger(__name__)
# The websockets library logs every request line at DEBUG, and a path may carry a
# token (?token=, or before a function id): its logger stays at WARNING and above.
_PROTOCOL_LOG = logging.getLogger(__name__ + ".protocol")
_PROTOCOL_LOG.setLevel(logging.WARNING)

MAX_CALLS_PER_CONNECTION = 256
"""Calls one connection may have running at once; reading pauses beyond that."""

DRAIN_IDLE_CLOSE = 1.0
"""Seconds a connection with no running call must have been silent before a drain
closes it. Longer than a client's pause between a reply and its next call (so that
call is sent before the Close, and answered), short enough for a drain of seconds."""
DRAIN_GOING_AWAY = "server draining: reconnect"


class _Peer:
    """One connection: whether it opted in to zstd, its running calls, when it last spoke."""

    __slots__ = ("calls", "closing", "conn", "last_frame", "limit", "scope", "tasks", "zstd")

    def __init__(self, conn: ServerConnection, zstd: bool) -> None:
        self.conn = conn
        self.zstd = zstd
        self.scope = CallScope()
        self.tasks: set[asyncio.Task[None]] = set()
        self.limit = asyncio.Semaphore(MAX_CALLS_PER_CONNECTION)
        self.calls = 0  # calls read and not yet answered
        self.last_frame = asyncio.get_running_loop().time()
        self.closing = False  # a drain decided to close it: frames after that are not run


class WsTransport:
    """Serves the dispatcher over WebSocket; :meth:`start`, :meth:`drain`, :meth:`close`."""

    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher[CallScope],
        auth: TokenAuth,
        metrics: Metrics,
        functions: Callable[[str], FunctionTarget] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._functions = functions  # binds <ws base>/<function_id> connections
        self._auth = auth
        self._metrics = metrics
        self._max_size = config.server.max_message_size
        self._threshold = reply_threshold(
            config.compression.algorithm, config.compression.threshold
        )
        self._compressor = zstandard.ZstdCompressor(level=config.compression.level)
        self._server: Server | None = None
        self._draining = False
        self._peers: set[_Peer] = set()
        self._all_closed = asyncio.Event()
        self._idle_closer: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_auth,
            max_size=self._max_size,
            compression="deflate",
            server_header=None,
            logger=_PROTOCOL_LOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop_accepting(self) -> None:
        """Start draining: refuse new connections; open ones are served until each can be
        closed while its client waits for nothing (see the module's docstring)."""
        if self._draining:
            return
        self._draining = True
        if self._server is not None:
            self._server.close(close_connections=False)
        if not self._peers:
            self._all_closed.set()
        self._idle_closer = asyncio.create_task(self._close_silent_peers())

    async def drain(self, timeout: float) -> bool:
        """After :meth:`stop_accepting`: wait until every connection has closed.

        Returns False if some are still open after ``timeout`` seconds (:meth:`close`
        then closes them, replies still owed or not).
        """
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close every connection (1001 going away) and wait for the handlers."""
        if self._idle_closer is not None:
            self._idle_closer.cancel()
        if self._server is None:
            return
        self._draining = True
        self._server.close(close_connections=False)
        connections = list(self._server.connections)
        if connections:
            await asyncio.gather(
                *(conn.close(CloseCode.GOING_AWAY, "server shutting down") for conn in connections),
                return_exceptions=True,
            )
        await self._server.wait_closed()

    # -- handshake ------------------------------------------------------------------------

    def _check_auth(self, conn: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        functions = self._functions is not None
        route = function_route(request.path) if functions else None
        malformed = malformed_function_path(request.path) if functions else None
        allowed = (
            self._auth.allows_request(request.headers, request.path)
            # a token in the path before the function id (or before a malformed one)
            or (route is not None and self._auth.allows(route.path_token))
            or (malformed is not None and self._auth.allows(malformed.path_token))
        )
        if not allowed:
            return conn.respond(HTTPStatus.UNAUTHORIZED, "missing or invalid token\n")
        if malformed is not None:
            return conn.respond(HTTPStatus.NOT_FOUND, malformed.reason + "\n")
        return None

    # -- one connection -------------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        path = conn.request.path if conn.request is not None else ""
        peer = _Peer(conn, zstd=query_param(path, "compression") == "zstd")
        route = function_route(path) if self._functions is not None else None
        peer.scope = CallScope(
            push=functools.partial(self._notify, peer),
            function=self._functions(route.function_id) if self._functions and route else None,
        )
        self._metrics.ws_connections.inc()
        self._peers.add(peer)
        try:
            await self._read_loop(peer)
        except ConnectionClosed:
            pass
        finally:
            self._metrics.ws_connections.dec()
            # Calls still running finish (their state commits); their replies are dropped.
            if peer.tasks:
                await asyncio.gather(*peer.tasks, return_exceptions=True)
            self._peers.discard(peer)
            if self._draining and not self._peers:
                self._all_closed.set()

    async def _read_loop(self, peer: _Peer) -> None:
        conn = peer.conn
        limit = peer.limit
        tasks = peer.tasks
        loop = asyncio.get_running_loop()
        async for message in conn:
            peer.last_frame = loop.time()
            if peer.closing:
                continue  # crossed our Close: it cannot be answered here, so it is not run
            if isinstance(message, bytes):
                peer.zstd = True
                try:
                    frame: bytes | str = self._inflate(message)
                except DecompressedTooLarge:
                    await conn.close(CloseCode.MESSAGE_TOO_BIG, "decompressed message too big")
                    return
                except CompressionError as error:
                    data = self._dispatcher.reject(jsonrpc.PARSE_ERROR, f"parse error: {error}")
                    self._spawn(peer, self._send(peer, data))
                    continue
            else:
                frame = message
            # One task per frame, started in arrival order: calls of one actor reach the
            # pool's queue in the order they were sent (nothing awaits before that).
            await limit.acquire()
            peer.calls += 1
            task = loop.create_task(self._run(peer, frame))  # no get_running_loop()
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def _inflate(self, data: bytes) -> bytes:
        plain = inflate_frame(data, self._max_size)
        if plain is not data:
            self._metrics.compressed(len(plain), len(data))
        return plain

    def _spawn(self, peer: _Peer, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        peer.tasks.add(task)
        task.add_done_callback(peer.tasks.discard)

    async def _run(self, peer: _Peer, frame: bytes | str) -> None:
        try:
            data = await self._dispatcher.answer(frame, peer.scope, refuse=peer.closing)
            if data is not None:
                await self._send(peer, data)
        except Exception:
            log.exception("a WebSocket call failed outside the dispatcher")
        finally:
            peer.limit.release()
            peer.calls -= 1
            if self._draining and peer.calls == 0:
                self._close_peer(peer)  # its client has its last reply and waits for nothing

    def _close_peer(self, peer: _Peer) -> None:
        """Close a drained connection (1001) in the background; idempotent."""
        if peer.closing:
            return
        peer.closing = True
        self._spawn(peer, self._going_away(peer.conn))

    @staticmethod
    async def _going_away(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.close(CloseCode.GOING_AWAY, DRAIN_GOING_AWAY)

    async def _close_silent_peers(self) -> None:
        """While draining: close each connection with no running call once it has been
        silent for DRAIN_IDLE_CLOSE seconds (checked every tenth of that)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for peer in list(self._peers):
                if peer.calls == 0 and now - peer.last_frame >= DRAIN_IDLE_CLOSE:
                    self._close_peer(peer)
            await asyncio.sleep(DRAIN_IDLE_CLOSE / 10)

    async def _notify(self, peer: _Peer, method: str, params: JSON) -> None:
        data = jsonrpc.encode_bytes(jsonrpc.notification(method, params))
        if data is not None:
            await self._send(peer, data)

    async def _send(self, peer: _Peer, data: bytes) -> None:
        """UTF-8 JSON as text, or as a binary zstd frame when :func:`compress_reply` says."""
        try:
            if compress_reply(len(data), peer.zstd, self._threshold):
                compressed = self._compressor.compress(data)
                self._metrics.compressed(len(data), len(compressed))
                await peer.conn.send(compressed)
                return
            await peer.conn.send(data, text=True)  # already UTF-8: sent as a text frame
        except ConnectionClosed:
            pass  # the client left; nobody is waiting for this reply
