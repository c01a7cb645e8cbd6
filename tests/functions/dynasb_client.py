"""A client that behaves exactly as Reflow's deploy-then-call client (``dynasb_engine``).

Copied rules, from ``reflow-dynasb-api.md``:

- configured with ``api_url`` and ``ws_url``; a ``user:password@`` in ``api_url`` makes
  every REST request carry HTTP Basic auth, and no other header is sent but JSON's;
- deploy: ``POST {api_url}/api/v1/functions`` with exactly the six fields Reflow sends
  (``dependencies`` null or ``{"package": "*"}``, ``timeout_seconds`` 300 when absent);
  the body is parsed first: ``success`` must be a bool, ``function_id`` a string when it
  is true, else ``error`` is the failure shown;
- status: ``GET {api_url}/api/v1/functions/{id}`` every 500 ms for at most
  ``timeout_seconds``, with every field required and typed (``vmId`` a string, not
  null; ``invocationCount`` an unsigned integer); ``ready``/``running`` are ready,
  ``deploying``/``starting``/``booting``/``stopping`` keep polling,
  ``stopped``/``removed`` give up, anything else is unhealthy;
- calls: the WebSocket ``ws_url + "/" + function_id`` (nothing appended), speaking the
  wire protocol of :class:`tests.server.clients.ReflowClient`;
- undeploy: ``POST {api_url}/api/v1/functions/{id}/undeploy`` with no body, the answer
  not read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from tests.server.clients import ReflowClient

POLL_INTERVAL = 0.5
READY = {"ready", "running"}
KEEP_POLLING = {"deploying", "starting", "booting", "stopping"}
GIVE_UP = {"stopped", "removed"}
STATUS_FIELDS: dict[str, type] = {
    "id": str,
    "name": str,
    "runtime": str,
    "state": str,
    "vmId": str,
    "invocationCount": int,
}


class DeployFailed(Exception):
    """What Reflow reports when a deploy or its readiness wait fails."""


@dataclass(frozen=True)
class Status:
    id: str
    name: str
    runtime: str
    state: str
    vm_id: str
    invocation_count: int


def parse_status(body: Any) -> Status:
    """Reflow's parse of the status body: every field present, of its type."""
    if not isinstance(body, dict):
        raise DeployFailed(f"status is not an object: {body!r}")
    for name, kind in STATUS_FIELDS.items():
        value = body.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DeployFailed(f"status field {name!r} missing or not {kind.__name__}: {body!r}")
    if body["invocationCount"] < 0:
        raise DeployFailed(f"invocationCount is negative: {body!r}")
    return Status(
        body["id"], body["name"], body["runtime"], body["state"], body["vmId"],
        body["invocationCount"],
    )  # fmt: skip


class DynAsbClient:
    """Reflow's ``DynASBConfig { api_url, ws_url }`` client, over real sockets."""

    def __init__(self, api_url: str, ws_url: str) -> None:
        parts = urlsplit(api_url)
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers["Authorization"] = (
                "Basic " + base64.b64encode(credentials.encode()).decode()
            )
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            parts = parts._replace(netloc=netloc)
        self.api_url = urlunsplit(parts).rstrip("/")
        self.ws_url = ws_url
        self.deployed: list[str] = []
        self.polls = 0

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                self.api_url + path,
                json=body,
                headers=self.headers
                if body is not None
                else {k: v for k, v in self.headers.items() if k != "Content-Type"},
            ) as response,
        ):
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                raise DeployFailed(f"HTTP {response.status}, body not JSON: {text!r}") from None

    async def deploy_raw(
        self,
        name: str,
        runtime: str,
        code: str,
        *,
        timeout_seconds: int | None = None,
        dependencies: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """The deploy POST exactly as Reflow builds it; (HTTP status, parsed body)."""
        return await self._request(
            "POST",
            "/api/v1/functions",
            {
                "name": name,
                "runtime": runtime,
                "code": code,
                "handler": name,
                "timeout_seconds": timeout_seconds if timeout_seconds is not None else 300,
                "dependencies": dependencies,
            },
        )

    async def deploy(
        self,
        name: str,
        runtime: str,
        code: str,
        *,
        timeout_seconds: int | None = None,
        dependencies: dict[str, str] | None = None,
    ) -> str:
        """Deploy, then wait until ready as Reflow does; the function id."""
        _, body = await self.deploy_raw(
            name, runtime, code, timeout_seconds=timeout_seconds, dependencies=dependencies
        )
        if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
            raise DeployFailed(f"deploy answer without a bool success: {body!r}")
        if not body["success"]:
            raise DeployFailed(f"deploy failed: {body.get('error')}")
        function_id = body.get("function_id")
        if not isinstance(function_id, str):
            raise DeployFailed(f"deploy succeeded without a function_id: {body!r}")
        self.deployed.append(function_id)
        await self.wait_ready(function_id, timeout_seconds or 300)
        return function_id

    async def status(self, function_id: str) -> Status:
        _, body = await self._request("GET", f"/api/v1/functions/{function_id}")
        return parse_status(body)

    async def wait_ready(self, function_id: str, timeout_seconds: float) -> Status:
        deadline = time.monotonic() + timeout_seconds
        while True:
            self.polls += 1
            status = await self.status(function_id)
            if status.state in READY:
                return status
            if status.state in GIVE_UP:
                raise DeployFailed(f"function {function_id} is {status.state}")
            if status.state not in KEEP_POLLING:
                raise DeployFailed(f"function {function_id} is unhealthy: {status.state}")
            if time.monotonic() >= deadline:
                raise DeployFailed(f"function {function_id} not ready in {timeout_seconds} s")
            await asyncio.sleep(POLL_INTERVAL)

    async def undeploy(self, function_id: str) -> None:
        """As Reflow: no body, the answer is not read."""
        await self._request("POST", f"/api/v1/functions/{function_id}/undeploy")
        if function_id in self.deployed:
            self.deployed.remove(function_id)

    def connect(self, function_id: str) -> ReflowClient:
        """The actor instance's WebSocket: ``ws_url + "/" + function_id``."""
        return ReflowClient(self.ws_url + "/" + function_id)
