"""Bearer tokens: who may call the server.

Reflow's client cannot set headers, so a WebSocket client may present its token in
the query string (``?token=...``) as well as in ``Authorization: Bearer ...``; HTTP
clients use the header. Reflow's REST client sends HTTP Basic auth when its URL
carries ``user:password@``: the *password* is the token (the user name is free), and
a URL with a user name alone (``http://TOKEN@host``) presents that name. A function's
WebSocket may carry the token in its path (see :mod:`..functions.routes`). Tokens are
compared in constant time against every configured token, so neither timing nor the
order of the list leaks anything.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlsplit


class TokenAuth:
    """Checks presented tokens against the configured ones (none configured = open)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode("utf-8") for token in tokens if token]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the tokens (always True when auth is off)."""
        if not self._tokens:
            return True
        if not presented:
            return False
        candidate = presented.encode("utf-8")
        found = False
        for token in self._tokens:
            # No early exit: every token is compared, whatever matches.
            found |= hmac.compare_digest(candidate, token)
        return found

    def allows_request(self, headers: Mapping[str, str], path: str | None = None) -> bool:
        """Check a request: a Bearer or Basic header, else (``path`` given) ``?token=``."""
        if not self._tokens:
            return True
        header = headers.get("Authorization")
        presented = bearer_token(header)
        if presented is None:
            presented = basic_token(header)
        if presented is None and path is not None:
            presented = query_param(path, "token")
        return self.allows(presented)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def basic_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Basic`` header: the password, or the user name
    when the password is empty; None when the header is not Basic or is malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return (password or user) or None


def query_param(path: str, name: str) -> str | None:
    """The first value of ``name`` in the query string of a request path, or None."""
    query = urlsplit(path).query
    if not query:
        return None
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None
