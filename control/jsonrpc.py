"""The JSON-RPC 2.0 codec, without I/O: parse a frame, build and encode answers.

:func:`parse` turns a frame (``bytes`` or ``str``) into one :class:`Request`, a list of
them (a batch), or a ready error response; :func:`encode_bytes` turns responses into the
bytes to send; :func:`refusal` is the answer owed to a frame that arrives while the server
takes no new calls. Running the requests is :mod:`.dispatch`'s business; nothing here
awaits or knows about sockets.

Two rules from Reflow's client shape the responses: the ``id`` is echoed exactly as
received (a string stays a string, a number stays the same number), and a success
response has ``result`` and never an ``error`` key (Reflow treats any ``error`` key,
even in ``result``, as a failure).

Nothing a client sends makes this module raise: a frame nested deeper than
:data:`~.jsonlimits.MAX_MESSAGE_DEPTH` is a -32700 error naming the limit, a string
that is not valid Unicode (a lone surrogate escape) is a -32600 error, an exception in a
method is -32603 for that request (logged with its traceback), and :func:`encode_bytes`
turns a response that cannot be encoded into a -32603 error instead of raising.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from .errors import CallError
from .jsonlimits import (
    MAX_MESSAGE_DEPTH,
    huge_number_message,
    int_or_infinity,
    lone_surrogate,
    may_hold_huge_number,
    may_hold_surrogate,
    nesting_exceeds,
    non_finite_path,
    surrogate_message,
)
from .vocabulary import JSON
from .vocabulary import STRICT_JSON_DECODER as _decoder
from .vocabulary import STRICT_JSON_ENCODER as _encoder

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Server errors (-32000 to -32099): one code per sandbox failure kind, so a client can
# tell them apart by code as well as by ``data.kind``.
SANDBOX_ERROR_CODES: dict[str, int] = {
    "timeout": -32001,
    "memory": -32002,
    "crashed": -32003,
    "output_too_large": -32004,
    "script_error": -32005,
    "load_error": -32006,
    "pool_exhausted": -32007,
    "state_error": -32008,
    "unavailable": -32009,
}
SERVER_ERROR = -32000

Id = str | int | float | None
Response = dict[str, JSON]


class RpcError(Exception):
    """An error a method raises to answer with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: JSON = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_object(self) -> dict[str, JSON]:
        error: dict[str, JSON] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def sandbox_rpc_error(error: CallError) -> RpcError:
    """The server error that reports a sandbox failure; ``data.kind`` is the failure kind."""
    data: dict[str, JSON] = {"kind": error.kind}
    data.update(error.details)
    return RpcError(SANDBOX_ERROR_CODES.get(error.kind, SERVER_ERROR), error.message, data)


@dataclass(frozen=True, slots=True)
class Request:
    """One call (or notification, when ``is_notification``) taken from a frame."""

    method: str
    params: JSON
    id: Id
    is_notification: bool


Parsed = Request | list[Request | Response] | Response
"""What a frame holds: one request, a batch (requests and ready error responses), or
a ready error response (the frame itself was unusable)."""


def error_response(id_: Id, code: int, message: str, data: JSON = None) -> Response:
    return {"jsonrpc": "2.0", "id": id_, "error": RpcError(code, message, data).to_object()}


_wide_decoder = json.JSONDecoder(parse_constant=_decoder.parse_constant, parse_int=int_or_infinity)


def decode_json(data: bytes | str, *, huge_numbers: bool = False) -> JSON:
    """Strict JSON (no NaN/Infinity); raises ``ValueError`` on anything else.

    With ``huge_numbers`` (the text may hold one: ``may_hold_huge_number``), an integer
    beyond a double's range decodes to infinity, as ``1e400`` does, for the caller to
    refuse by field (``int_or_infinity``); off the hot path, as the hook costs a Python
    call per integer.
    """
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    return (_wide_decoder if huge_numbers else _decoder).decode(text)


def encode(message: Response | list[Response]) -> str:
    """Compact JSON text of a response, a batch of them, or a notification."""
    return _encoder.encode(message)


def encode_bytes(message: Response | list[Response]) -> bytes | None:
    """UTF-8 JSON of a response, a batch or a notification; never raises.

    A response that cannot be encoded (a value that is not valid Unicode, too deep, not
    JSON) becomes a -32603 error for its id, logged with the reason; such a notification
    is dropped (None). Values from sandboxes are checked before they get here
    (:mod:`.sandbox.runner_protocol`), so this is the last line of defence.
    """
    try:
        return _encoder.encode(message).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as error:
        log.error("could not encode a JSON-RPC message: %s", error, exc_info=True)
        replacement = _unencodable(message, error)
        if replacement is None:
            return None
        return _encoder.encode(replacement).encode("utf-8")


def _unencodable(
    message: Response | list[Response], error: BaseException
) -> Response | list[Response] | None:
    if isinstance(message, list):
        answers: list[Response] = []
        for item in message:
            try:
                _encoder.encode(item).encode("utf-8")
            except (ValueError, TypeError, RecursionError) as item_error:
                fixed = _unencodable(item, item_error)
                if isinstance(fixed, dict):
                    answers.append(fixed)
            else:
                answers.append(item)
        return answers
    if "method" in message and "id" not in message:
        return None  # a notification: nobody waits for it
    id_ = message.get("id")
    if not _valid_id(id_) or lone_surrogate(id_) is not None:
        id_ = None
    return error_response(
        id_, INTERNAL_ERROR, f"internal error: the response could not be encoded ({error})"
    )


def notification(method: str, params: JSON) -> dict[str, JSON]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _valid_id(value: object) -> bool:
    # bool is an int in Python but not a valid id; an infinite float (an id beyond a
    # double's range, e.g. 1e400) is not one either: no JSON reply could echo it.
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


def _parse_one(item: object) -> Request | Response:
    if not isinstance(item, dict):
        return error_response(None, INVALID_REQUEST, "invalid request: not a JSON object")
    has_id = "id" in item
    id_ = item.get("id")
    if not _valid_id(id_):
        return error_response(
            None, INVALID_REQUEST, "invalid request: id must be a string, a number or null"
        )
    if item.get("jsonrpc") != "2.0":
        return error_response(id_, INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"')
    method = item.get("method")
    if not isinstance(method, str):
        return error_response(id_, INVALID_REQUEST, "invalid request: method must be a string")
    params = item.get("params")
    if "params" in item and not isinstance(params, dict | list):
        return error_response(
            id_, INVALID_REQUEST, "invalid request: params must be an object or an array"
        )
    return Request(method, params, id_, not has_id)


def parse(data: bytes | str) -> Parsed:
    """Turn a frame into requests, or into the error response it deserves (never raises)."""
    if nesting_exceeds(data, MAX_MESSAGE_DEPTH):
        return error_response(
            None,
            PARSE_ERROR,
            f"parse error: the JSON nests deeper than {MAX_MESSAGE_DEPTH} levels (the limit)",
            {"limit": MAX_MESSAGE_DEPTH},
        )
    huge_numbers = may_hold_huge_number(data)
    try:
        message = decode_json(data, huge_numbers=huge_numbers)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError, JSONDecodeError too
        return error_response(None, PARSE_ERROR, f"parse error: {error}")
    check = _check_unicode if may_hold_surrogate(data) else _parse_one
    if huge_numbers:
        check = functools.partial(_check_numbers, check)
    if isinstance(message, list):
        if not message:
            return error_response(None, INVALID_REQUEST, "invalid request: empty batch")
        return [check(item) for item in message]
    return check(message)


def _check_unicode(item: object) -> Request | Response:
    """``_parse_one``, refusing a request with a string that is not valid Unicode."""
    parsed = _parse_one(item)
    code_point = lone_surrogate(item)
    if code_point is None:
        return parsed
    id_ = parsed.id if isinstance(parsed, Request) else parsed.get("id")
    if lone_surrogate(id_) is not None:
        id_ = None
    return error_response(
        id_, INVALID_REQUEST, "invalid request: " + surrogate_message("a string", code_point)
    )


def _check_numbers(
    inner: Callable[[object], Request | Response], item: object
) -> Request | Response:
    """``inner``, refusing a request whose params hold a number beyond a double's range
    (it decodes to infinity): -32602 naming the field, before any method runs."""
    parsed = inner(item)
    if not isinstance(parsed, Request):
        return parsed
    where = non_finite_path(parsed.params)
    if where is None:
        return parsed
    return error_response(
        parsed.id,
        INVALID_PARAMS,
        "invalid params: " + huge_number_message(where),
        {"fields": [where]},
    )


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "params"


def invalid_params(error: ValidationError) -> RpcError:
    """-32602 whose message names each bad field and what was wrong with it."""
    problems = [f"{_field_name(item['loc'])}: {item['msg']}" for item in error.errors()]
    fields = [_field_name(item["loc"]) for item in error.errors()]
    return RpcError(INVALID_PARAMS, "invalid params: " + "; ".join(problems), {"fields": fields})


SHUTTING_DOWN = RpcError(
    SANDBOX_ERROR_CODES["unavailable"],
    "the server is shutting down: send the request to another node",
    {"kind": "unavailable"},
)
"""What a request gets when it arrives after the server stopped taking calls."""


def refusal(parsed: Parsed) -> Response | list[Response] | None:
    """The answer to a frame that arrives while the server takes no new calls: each
    request's own id with :data:`SHUTTING_DOWN` (a notification gets nothing; an item
    that parsed to an error keeps its own error). None when nothing is owed."""
    if isinstance(parsed, dict):
        return parsed
    items = [parsed] if isinstance(parsed, Request) else parsed
    answers: list[Response] = []
    for item in items:
        if not isinstance(item, Request):
            answers.append(item)
        elif not item.is_notification:
            answers.append({"jsonrpc": "2.0", "id": item.id, "error": SHUTTING_DOWN.to_object()})
    if isinstance(parsed, Request):
        return answers[0] if answers else None
    return answers or None
