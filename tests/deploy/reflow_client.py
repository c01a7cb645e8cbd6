#!/usr/bin/env python3
"""A client that speaks to the control plane the way Reflow's script-actor client does.

One WebSocket connection per actor instance, text frames only, one ``process`` request
per frame with a UUID string id; ``output`` notifications are collected until the
response with that id arrives; a connection the server closed is dialled again before
the next call (:class:`ReflowConnection`). Used by tests/deploy/test_compose.py (imported) and by
molecule/default/verify.yml (run on a node with the control plane's Python:
``reflow_client.py URL ACTOR [--calls N]``, one JSON line per call on stdout).
Needs only the standard library and ``websockets``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect


@dataclass
class CallResult:
    """What Reflow would see from one call: the response and the pushes before it."""

    id_echoed: bool
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    pushes: list[dict[str, Any]] = field(default_factory=list)


def process_request(
    actor: str, payload: dict[str, Any], *, instance: str | None = None
) -> tuple[str, str]:
    """A ``process`` request as Reflow sends it: (its id, the frame text). ``instance``
    names the actor instance whose state it is (the actor's name by default)."""
    call_id = str(uuid.uuid4())
    frame = {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "process",
        "params": {
            "payload": payload,
            "config": {},
            "state": {
                "namespace": "default",
                "actor_id": instance or actor,
                "redis_url": "redis://ignored-by-the-server:6379",
            },
            "actor_id": actor,
            "timestamp": int(time.time() * 1000),
        },
    }
    return call_id, json.dumps(frame)


def _await_response(ws: ClientConnection, call_id: str, timeout: float) -> CallResult:
    """Read until the response to ``call_id``; pushes before it are collected."""
    pushes: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no response to {call_id} within {timeout} s")
        message = ws.recv(timeout=remaining)
        if isinstance(message, bytes):
            continue  # Reflow ignores binary frames; so do we.
        data = json.loads(message)
        if "id" not in data:
            if data.get("method") in ("output", "script_output"):
                pushes.append(data["params"])
            continue
        if data["id"] != call_id:
            continue  # Reflow drops responses with unknown ids.
        return CallResult(
            id_echoed=isinstance(data["id"], str),
            outputs=(data.get("result") or {}).get("outputs"),
            error=data.get("error"),
            pushes=pushes,
        )


class ReflowConnection:
    """One actor instance's connection, kept across calls, redialled lazily as Reflow does:
    before a call, if the server closed it (a draining node says 1001), dial again, which
    through the balancer reaches another node. A call whose connection closes before its
    response arrives is lost: :meth:`call` raises ``ConnectionClosed``, as Reflow fails it.
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.dials = 0
        self._ws: ClientConnection | None = None
        self._opened = contextlib.ExitStack()

    def call(self, actor: str, payload: dict[str, Any] | None = None) -> CallResult:
        if self._ws is None or self._ws.protocol.state is not State.OPEN:
            self.close()
            self._ws = self._opened.enter_context(
                connect(self.url, open_timeout=self.timeout, close_timeout=2, max_size=2**24))
            self.dials += 1
        call_id, frame = process_request(actor, payload or {"input": 1})
        self._ws.send(frame)
        return _await_response(self._ws, call_id, self.timeout)

    def close(self) -> None:
        self._ws = None
        self._opened.close()


def call(url: str, actor: str, payload: dict[str, Any] | None = None, *, timeout: float = 30.0,
         calls: int = 1) -> list[CallResult]:
    """Open one connection to ``url`` and make ``calls`` process calls for ``actor``."""
    results: list[CallResult] = []
    with connect(url, open_timeout=timeout, close_timeout=2, max_size=2**24) as ws:
        for _ in range(calls):
            call_id, frame = process_request(actor, payload or {"input": 1})
            ws.send(frame)
            results.append(_await_response(ws, call_id, timeout))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="ws://HOST:PORT/?actor=NAME&token=TOKEN")
    parser.add_argument("actor", help="the actor's component name (params.actor_id)")
    parser.add_argument("--calls", type=int, default=1, help="calls on the one connection")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    results = call(args.url, args.actor, timeout=args.timeout, calls=args.calls)
    for result in results:
        print(json.dumps(asdict(result)))
    return 0 if all(r.error is None and r.id_echoed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
