"""The deploy-then-call REST endpoints on the HTTP port (aiohttp routes over the service).

==========================================  ===========================================
``POST /api/v1/functions``                  deploy: ``{"success", "function_id", ...}``
``GET /api/v1/functions/{id}``              status: ``{"id", "name", "runtime", "state",
                                            "vmId", "invocationCount"}``
``POST /api/v1/functions/{id}/undeploy``    undeploy (no body; Reflow reads no answer)
==========================================  ===========================================

Every answer is JSON, failures included (Reflow parses the body before it looks at
the status code). With ``auth.tokens`` set, a request presents a token by HTTP Basic
auth (the password; what Reflow sends for ``http://user:TOKEN@host``) or
``Authorization: Bearer``; anything else gets 401 with a JSON body.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..transports.auth import TokenAuth
from ..transports.http import unreadable_body
from .model import deploy_failed
from .service import FunctionService, Reply

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_AUTH_CHALLENGE = 'Basic realm="reflow-microsandbox", charset="UTF-8"'


def _json(reply: Reply, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(reply.body, separators=(",", ":")),
        status=reply.status,
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json_errors(handler: Handler) -> Handler:
    """An unexpected failure still answers Reflow's JSON shape (500), never a traceback."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except web.RequestPayloadError as error:  # the client's body, e.g. bad deflate
            return _json(Reply(400, deploy_failed(unreadable_body(error))))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _json(Reply(500, deploy_failed("internal error")))

    return guarded


class FunctionRoutes:
    """The three REST endpoints; :meth:`routes` gives them to the HTTP transport."""

    def __init__(self, service: FunctionService, auth: TokenAuth, max_code_bytes: int) -> None:
        self._service = service
        self._auth = auth
        # JSON escapes a character in at most 6 bytes; the rest of the body is small.
        self._max_body = 6 * max_code_bytes + _CHUNK

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/functions", _json_errors(self._deploy)),
            web.get("/api/v1/functions/{function_id}", _json_errors(self._status)),
            web.post("/api/v1/functions/{function_id}/undeploy", _json_errors(self._undeploy)),
        ]

    def _refused(self, request: web.Request) -> web.Response | None:
        if self._auth.allows_request(request.headers):
            return None
        reply = Reply(401, {"success": False, "error": "missing or invalid token"})
        return _json(reply, {"WWW-Authenticate": _AUTH_CHALLENGE})

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is larger than any deploy may be."""
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        body = bytearray()
        while chunk := await request.content.read(_CHUNK):
            body += chunk
            if len(body) > self._max_body:
                return None
        return bytes(body)

    async def _deploy(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await self._read_body(request)
        if body is None:
            message = f"the request body is larger than {self._max_body} bytes"
            return _json(Reply(413, deploy_failed(message)))
        return _json(await self._service.deploy(body))

    async def _status(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return _json(await self._service.status(request.match_info["function_id"]))

    async def _undeploy(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return _json(await self._service.undeploy(request.match_info["function_id"]))
