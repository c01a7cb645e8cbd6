"""Where a function id, and a token, sit in a WebSocket request path (sans-I/O).

Reflow opens ``ws_url + "/" + function_id`` and can append nothing after the id, so
a credential can only travel in the path before it (``reflow-dynasb-api.md``). A
path is a function connection when its last segment is a function id; the segment
right before the id, when there is one, is offered as a token:

====================================  ============  ==============
path                                  function id   path token
====================================  ============  ==============
``/ws/fn-…``                          ``fn-…``      ``ws`` (no token matches it)
``/ws/<token>/fn-…``                  ``fn-…``      ``<token>``
``/fn-…?token=<token>``               ``fn-…``      none (the query serves)
``/``, ``/?actor=x``                  none: an ordinary actor connection
``/ws/fn-nope``, ``/ws/<token>/x``    refused (404): :func:`malformed_function_path`
====================================  ============  ==============
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .model import FUNCTION_ID


@dataclass(frozen=True)
class FunctionRoute:
    """A WebSocket path that names a function."""

    function_id: str
    path_token: str | None


def function_route(path: str) -> FunctionRoute | None:
    """The function a request path names, or None for an ordinary connection."""
    segments = [unquote(part) for part in urlsplit(path).path.split("/") if part]
    if not segments or not FUNCTION_ID.fullmatch(segments[-1]):
        return None
    token = segments[-2] if len(segments) >= 2 else None
    return FunctionRoute(segments[-1], token)


@dataclass(frozen=True)
class MalformedRoute:
    """A WebSocket path meant to name a function that names none."""

    reason: str
    path_token: str | None


def malformed_function_path(path: str) -> MalformedRoute | None:
    """Why ``path`` names no function although it is meant to, or None.

    A path under ``/ws/`` (the function base Reflow is given), or one whose last
    segment starts with ``fn-``, must end in a well-formed function id; anything else
    would silently become an ordinary actor connection. The reason names the segment
    (cut to 64 characters); the segment before it is offered as a token, as for a
    well-formed path, so that a caller with a valid token learns the path is wrong."""
    segments = [unquote(part) for part in urlsplit(path).path.split("/") if part]
    if not segments or FUNCTION_ID.fullmatch(segments[-1]):
        return None
    if segments[0] != "ws" and not segments[-1].startswith("fn-"):
        return None
    return MalformedRoute(
        f"no such function: {segments[-1][:64]!r} is not a function id (fn- and 32 hex digits)",
        segments[-2] if len(segments) >= 2 else None,
    )
