"""The unsandboxed baseline for ``rpc_bench.py``: JSON-RPC over WebSocket, actor in-process.

    python bench/inprocess_server.py PORT

What a Reflow user runs today without isolation is Reflow's own Python runtime server: a
``websockets`` server that parses each JSON-RPC ``process`` request with ``json``, calls
the actor's ``process(context)`` inside the server process and sends the result back
(reflow's ``python_runtime_server.py``; its shape, not its code). This is a minimal
server of that shape, written here so that the benchmark measures our server and the
baseline with the same client, in the same run. It prints ``ready`` once it listens.

It runs the benchmark's actors (``ACTORS``) as plain functions: no sandbox, no pool, no
state store; a context with ``get_input`` and a ``send_output`` that pushes an ``output``
notification, as the wire protocol (``shared/spec/reflow-wire-protocol.md``) describes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


class Context:
    """The part of the actor context the benchmark's actors use."""

    def __init__(self, conn: ServerConnection, actor_id: str, payload: dict[str, Any]) -> None:
        self.conn = conn
        self.actor_id = actor_id
        self.payload = payload

    def get_input(self, port: str, default: Any = None) -> Any:
        return self.payload.get(port, default)

    async def send_output(self, port: str, value: Any) -> None:
        notification = {
            "jsonrpc": "2.0",
            "method": "output",
            "params": {"actor_id": self.actor_id, "port": port, "data": value},
        }
        await self.conn.send(json.dumps(notification))


def bench_echo(context: Context) -> dict[str, Any]:
    return {"out": context.get_input("data")}


def bench_double(context: Context) -> dict[str, Any]:
    value = context.get_input("data")
    return {"out": value * 2 if isinstance(value, int | float) else value}


ACTORS: dict[str, Callable[[Context], Any]] = {
    "bench_echo": bench_echo,
    "bench_double": bench_double,
}


def error(id_: Any, code: int, message: str) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}})


async def handle(conn: ServerConnection) -> None:
    async for frame in conn:
        try:
            request = json.loads(frame)
        except ValueError:
            await conn.send(error(None, -32700, "parse error"))
            continue
        id_ = request.get("id")
        params = request.get("params") or {}
        actor = ACTORS.get(str(params.get("actor_id")))
        if request.get("method") != "process" or actor is None:
            await conn.send(error(id_, -32601, "unknown method or actor"))
            continue
        try:
            outputs = actor(Context(conn, str(params.get("actor_id")), params.get("payload") or {}))
            if asyncio.iscoroutine(outputs):
                outputs = await outputs
        except Exception as failure:
            await conn.send(error(id_, -32005, f"{type(failure).__name__}: {failure}"))
            continue
        await conn.send(json.dumps({"jsonrpc": "2.0", "id": id_, "result": {"outputs": outputs}}))


async def main(port: int) -> None:
    async with serve(handle, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
