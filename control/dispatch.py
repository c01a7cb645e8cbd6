"""The JSON-RPC dispatcher: a whole frame in, the whole answer out (async, no sockets).

A transport hands :meth:`Dispatcher.answer` the frame it received (``bytes`` or ``str``,
already inflated) and sends the bytes it gets back, if any: parsing, refusing, running
each request (a batch's concurrently), counting and encoding all happen here, the same
for WebSocket and HTTP. Transports only move bytes and say whether a frame arrived after
they stopped taking calls (``refuse=True``): then every request in it gets the
``unavailable`` error of :func:`.jsonrpc.refusal` and no method runs.

Nothing a client sends makes :meth:`~Dispatcher.answer` raise: a method's exception is
-32603 for its request (logged with its traceback), and a bug in parsing is -32603 too.
The codec itself (parse, encode, error objects) is the pure :mod:`.jsonrpc`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import CallError
from .jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    Request,
    Response,
    RpcError,
    encode_bytes,
    error_response,
    invalid_params,
    parse,
    refusal,
    sandbox_rpc_error,
)
from .vocabulary import JSON

log = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")
P = TypeVar("P", bound=BaseModel)

CallObserver = Callable[[str, str], None]
"""Called once per answered call with (method label, outcome code label)."""


@dataclass(frozen=True, slots=True)
class _Method(Generic[Ctx]):
    params: type[BaseModel]
    handler: Callable[[Any, Ctx], Awaitable[JSON]]


class Dispatcher(Generic[Ctx]):
    """Registered methods, and the one place calls are validated, run and answered.

    ``Ctx`` is whatever the transport passes along with each call (the WebSocket
    connection's push channel, for instance).
    """

    def __init__(self, observer: CallObserver | None = None) -> None:
        self._methods: dict[str, _Method[Ctx]] = {}
        self._observer = observer
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def register(
        self, name: str, params: type[P], handler: Callable[[P, Ctx], Awaitable[JSON]]
    ) -> None:
        """Serve ``name``: params are validated against the ``params`` model first."""
        self._methods[name] = _Method(params, handler)

    @property
    def methods(self) -> list[str]:
        return list(self._methods)

    # -- frames -------------------------------------------------------------------------

    async def answer(self, frame: bytes | str, ctx: Ctx, *, refuse: bool = False) -> bytes | None:
        """The UTF-8 JSON answer to one frame, or None when nothing is owed (notifications).

        ``refuse``: the frame arrived after the transport stopped taking calls; its
        requests are answered with the ``unavailable`` error and none runs. Never raises
        (but lets cancellation through).
        """
        try:
            parsed = parse(frame)
        except Exception:  # parse promises not to raise; the connection outlives a bug
            log.exception("parsing a JSON-RPC frame failed")
            parsed = error_response(None, INTERNAL_ERROR, "internal error")
        reply: Response | list[Response] | None
        if isinstance(parsed, dict):
            self.rejected(parsed)
            reply = parsed
        elif refuse:
            reply = refusal(parsed)
        elif isinstance(parsed, Request):
            reply = await self.call(parsed, ctx)
        else:
            reply = await self.call_batch(parsed, ctx) or None
        return None if reply is None else encode_bytes(reply)

    def reject(self, code: int, message: str) -> bytes:
        """The error answer (id null) to a frame the transport could not even read (too
        large, corrupt compression), counted like any frame refused before a method."""
        response = error_response(None, code, message)
        self.rejected(response)
        return encode_bytes(response) or b""

    # -- requests -----------------------------------------------------------------------

    async def call(self, request: Request, ctx: Ctx) -> Response | None:
        """Run one request; the response to send, or None for a notification."""
        method = self._methods.get(request.method)
        label = request.method if method is not None else "unknown"
        self.in_flight += 1
        self._idle.clear()
        try:
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {request.method!r}")
            result = await method.handler(self._validate(method, request.params), ctx)
        except RpcError as error:
            return self._answer_error(request, label, error)
        except CallError as error:
            return self._answer_error(request, label, sandbox_rpc_error(error))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("method %s failed", request.method)
            return self._answer_error(request, label, RpcError(INTERNAL_ERROR, "internal error"))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if self._observer is not None:
            self._observer(label, "ok")
        if request.is_notification:
            return None
        return {"jsonrpc": "2.0", "id": request.id, "result": result}

    async def call_batch(self, items: list[Request | Response], ctx: Ctx) -> list[Response]:
        """Run a batch concurrently; the responses (empty when all were notifications)."""
        pending = [item for item in items if isinstance(item, Request)]
        results = iter(await asyncio.gather(*(self.call(item, ctx) for item in pending)))
        responses: list[Response] = []
        for item in items:
            if isinstance(item, Request):
                answer = next(results)
            else:
                answer = item
                self.rejected(item)
            if answer is not None:
                responses.append(answer)
        return responses

    def rejected(self, response: Response) -> None:
        """Count a frame that was answered without reaching a method (bad JSON, bad shape)."""
        if self._observer is not None:
            self._observer("invalid", str(response["error"]["code"]))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is running; False if some still run after ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _validate(self, method: _Method[Ctx], params: JSON) -> BaseModel:
        if isinstance(params, list):
            raise RpcError(
                INVALID_PARAMS,
                "invalid params: params must be an object (named parameters)",
                {"fields": ["params"]},
            )
        try:
            return method.params.model_validate(params if params is not None else {})
        except ValidationError as error:
            raise invalid_params(error) from None

    def _answer_error(self, request: Request, label: str, error: RpcError) -> Response | None:
        if self._observer is not None:
            self._observer(label, str(error.code))
        if request.is_notification:
            return None
        return {"jsonrpc": "2.0", "id": request.id, "error": error.to_object()}
