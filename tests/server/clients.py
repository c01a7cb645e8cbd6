"""Test clients over real sockets: one that behaves exactly as Reflow's, one that sees all.

:class:`ReflowClient` copies the rules of Reflow's ``WebSocketRpcClient`` (see
``reflow-wire-protocol.md``): UUIDv4 string ids, text frames only, binary frames
ignored, responses matched by string id only, pushes dropped unless they carry all
of ``actor_id``/``port``/``data``/``timestamp``. :class:`RawClient` records every
frame as received (text or binary) for tests of the framing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import zstandard
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PUSH_FIELDS = ("actor_id", "port", "data", "timestamp")


@dataclass
class Push:
    port: str
    data: Any
    actor_id: str
    timestamp: int


@dataclass
class ReflowReply:
    """What the Reflow actor would do with a response: outputs, or an error."""

    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    raw: dict[str, Any]
    pushes: list[Push] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


class ReflowClient:
    """Talks like Reflow's script-actor client: one connection, text only, string ids."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ignored_binary_frames = 0
        self.dropped_pushes = 0
        self.pushes: list[Push] = []
        self.logs: list[str] = []
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReflowClient:
        # Reflow's client (tungstenite) offers no permessage-deflate.
        self._conn = await connect(self.url, compression=None, max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._conn is not None
        try:
            async for frame in self._conn:
                if isinstance(frame, bytes):
                    self.ignored_binary_frames += 1
                    continue
                message = json.loads(frame)
                if "id" in message:
                    id_ = message["id"]
                    waiter = self._pending.pop(id_, None) if isinstance(id_, str) else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
                    continue
                method = message.get("method")
                params = message.get("params")
                if method in ("output", "script_output"):
                    if not isinstance(params, dict) or any(k not in params for k in PUSH_FIELDS):
                        self.dropped_pushes += 1
                        continue
                    if not isinstance(params["timestamp"], int) or params["timestamp"] < 0:
                        self.dropped_pushes += 1
                        continue
                    self.pushes.append(
                        Push(
                            params["port"], params["data"], params["actor_id"], params["timestamp"]
                        )
                    )
                elif method == "log" and isinstance(params, str):
                    self.logs.append(params)
        except ConnectionClosed:
            pass
        finally:
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("connection closed"))

    async def call(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> ReflowReply:
        """One request, answered within Reflow's 30 s or failed."""
        assert self._conn is not None
        id_ = str(uuid.uuid4())
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[id_] = waiter
        pushes_before, logs_before = len(self.pushes), len(self.logs)
        await self._conn.send(
            json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        )
        message = await asyncio.wait_for(waiter, timeout)
        assert message.get("jsonrpc") == "2.0"
        assert message["id"] == id_
        result = message.get("result")
        if "error" in message or (isinstance(result, dict) and "error" in result):
            error = message.get("error") or {"result_error": result.get("error")}  # type: ignore[union-attr]
            reply = ReflowReply(None, error, message)
        else:
            outputs = result.get("outputs", {}) if isinstance(result, dict) else {}
            reply = ReflowReply(outputs, None, message)
        reply.pushes = self.pushes[pushes_before:]
        reply.logs = self.logs[logs_before:]
        return reply

    async def process(
        self, actor_id: str, payload: dict[str, Any] | None = None, namespace: str = "default"
    ) -> ReflowReply:
        """The only call Reflow's production code makes, with its exact params."""
        return await self.call(
            "process",
            {
                "payload": payload or {},
                "config": {},
                "state": {
                    "namespace": namespace,
                    "actor_id": actor_id,
                    "redis_url": "redis://203.0.113.9:6379",  # must never be dialled
                },
                "actor_id": actor_id,
                "timestamp": 1726600000000,
            },
        )


Frame = str | bytes


class RawClient:
    """Sends frames as given and records what comes back, decoding zstd on request."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._decompressor = zstandard.ZstdDecompressor()

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        kwargs.setdefault("max_size", None)
        return cls(await connect(url, **kwargs))

    async def close(self) -> None:
        await self.conn.close()

    async def send(self, frame: Frame | dict[str, Any] | list[Any]) -> None:
        if isinstance(frame, dict | list):
            frame = json.dumps(frame)
        await self.conn.send(frame)

    async def recv_frame(self, timeout: float = 30.0) -> Frame:
        return await asyncio.wait_for(self.conn.recv(), timeout)

    def decode(self, frame: Frame) -> Any:
        if isinstance(frame, bytes):
            return json.loads(self._decompressor.decompress(frame))
        return json.loads(frame)

    async def recv(self, timeout: float = 30.0) -> Any:
        return self.decode(await self.recv_frame(timeout))

    async def request(
        self, method: str, params: Any = None, id_: Any = 1, timeout: float = 30.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send one request; (its response, the notifications that came before it)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.response_to(id_, timeout)

    async def response_to(
        self, id_: Any, timeout: float = 30.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        notes: list[dict[str, Any]] = []
        while True:
            message = await self.recv(timeout)
            if isinstance(message, dict) and "id" in message and message["id"] == id_:
                return message, notes
            notes.append(message)
