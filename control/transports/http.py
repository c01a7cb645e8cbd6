"""The HTTP transport (port 5555) and the metrics endpoint, on aiohttp.

``GET /health`` says the process is alive; ``GET /ready`` says whether it should get
traffic (pool warmed, state store answering), with the reasons when not;
``POST /api/v1/rpc`` runs the same dispatcher as the WebSocket, with pushed outputs
collected into ``result.outputs`` since HTTP has no push. Health and readiness stay
open for load balancers; the RPC endpoint needs a token when tokens are configured.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from .. import jsonrpc
from ..dispatch import Dispatcher
from ..methods import CallScope
from ..metrics import CONTENT_TYPE, Metrics
from .auth import TokenAuth

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[list[str]]]
"""Returns why the server is not ready (empty when it is)."""

_JSON = "application/json"
_COLLECT = CallScope(push=None)


def unreadable_body(error: web.RequestPayloadError) -> str:
    """Why aiohttp could not read a request body (e.g. ``Can not decode content-encoding:
    deflate`` for bytes that do not inflate), for a 400 answer: the client's fault."""
    cause = error.__cause__
    reason = getattr(cause, "message", None) if cause is not None else None
    return f"the body could not be read: {reason or str(error).splitlines()[-1].strip()}"


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404 and 405 (an unknown path or method) as JSON, like every other
    answer of this API: ``{"success": false, "error": "..."}``, the Allow header kept."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        if error.content_type == _JSON:
            raise  # already JSON (a handler's own answer)
        what = "no such endpoint" if error.status == 404 else "method not allowed"
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return web.json_response(
            {"success": False, "error": f"{what}: {request.method} {request.path[:200]}"},
            status=error.status,
            headers=allow,
        )


async def _bound_port(runner: web.AppRunner, host: str, port: int) -> int:
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    address = runner.addresses[-1]
    return int(address[1])


class HttpTransport:
    """Serves health, readiness and JSON-RPC over HTTP."""

    def __init__(
        self,
        dispatcher: Dispatcher[CallScope],
        auth: TokenAuth,
        ready: ReadyCheck,
        max_body: int,
        shutdown_timeout: float,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self._dispatcher = dispatcher
        self._auth = auth
        self._ready = ready
        self._draining = False
        app = web.Application(client_max_size=max_body, middlewares=[_json_errors])
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._readiness)
        app.router.add_post("/api/v1/rpc", self._rpc)
        app.router.add_routes(routes)  # e.g. the deploy-then-call API (functions.http_api)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=shutdown_timeout, handle_signals=False
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        self.port = await _bound_port(self._runner, host, port)
        return self.port

    def stop_accepting(self) -> None:
        """/ready turns 503 so balancers move traffic away while calls drain; new RPC
        calls are refused with 503 (the server closes the port once calls drained)."""
        self._draining = True

    async def close(self) -> None:
        if self._runner.server is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readiness(self, request: web.Request) -> web.Response:
        reasons = ["the server is shutting down"] if self._draining else await self._ready()
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response({"ready": True})

    async def _rpc(self, request: web.Request) -> web.Response:
        if not self._auth.allows_request(request.headers):
            return web.json_response(
                {"error": "missing or invalid token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as error:
            data: bytes | None = self._dispatcher.reject(
                jsonrpc.INVALID_REQUEST, f"invalid request: {error.text or error.reason}"
            )
            return web.Response(body=data, status=error.status, content_type=_JSON)
        except web.RequestPayloadError as error:
            data = self._dispatcher.reject(
                jsonrpc.PARSE_ERROR, f"parse error: {unreadable_body(error)}"
            )
            return web.Response(body=data, status=400, content_type=_JSON)
        # While draining nothing runs: 503 lets a balancer retry on another node.
        refuse = self._draining
        data = await self._dispatcher.answer(body, _COLLECT, refuse=refuse)
        if data is None:
            return web.Response(status=503 if refuse else 204)
        return web.Response(body=data, status=503 if refuse else 200, content_type=_JSON)


class MetricsEndpoint:
    """``GET /metrics`` in the Prometheus text format, on its own port."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        self.port = await _bound_port(self._runner, host, port)
        return self.port

    async def close(self) -> None:
        if self._runner.server is not None:
            await self._runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
