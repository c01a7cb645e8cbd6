"""Limits every JSON text and value at our boundaries obeys: nesting depth and valid Unicode.

Two things a script or a client can produce that JSON's grammar allows but a peer cannot
take, checked here without I/O and without recursion (so a hostile input cannot exhaust
the stack while it is being checked):

* **Nesting.** Python's ``json`` recurses once per level and raises ``RecursionError``
  near 1,000 levels; serde_json, which Reflow's client uses, refuses more than 128 (its
  default ``recursion_limit``, serde_json/src/de.rs). So a JSON-RPC message may nest at
  most :data:`MAX_MESSAGE_DEPTH` = 128 levels in either direction, and a value a script
  receives, returns, pushes or stores at most :data:`MAX_VALUE_DEPTH` = 100, which leaves
  room for the envelopes around it. A list or an object is one level; ``[]`` nests 1.
* **Lone surrogates.** ``"\\ud800"`` is valid JSON text but not valid Unicode: UTF-8
  cannot carry it (RFC 8259 section 8.2), so a WebSocket text frame or an HTTP body
  holding it cannot be sent. :func:`lone_surrogate` finds one in a decoded value.
* **Numbers beyond a double.** ``1e400`` is valid JSON text, but Python (like most JSON
  peers: RFC 8259 section 6) decodes it to a 64-bit float, where it overflows to
  infinity, which strict JSON cannot send on. :func:`non_finite_path` names where one is.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_MESSAGE_DEPTH = 128
"""Deepest nesting of a JSON-RPC message, in or out (serde_json's default limit)."""

MAX_VALUE_DEPTH = 100
"""Deepest nesting of a value crossing the sandbox boundary (payload, outputs, state)."""

MAX_STATE_VALUE_BYTES = 16 * 1024 * 1024
"""Largest state value (bytes of compact JSON) a store takes. A call's state values also
travel within its ``sandbox.max_output_bytes`` budget, so a runner refuses a value
larger than the smaller of the two (less frame room) with ``state_error`` naming it."""

# Every byte but the four brackets is deleted; braces fold into square brackets (the
# text is valid JSON, so they pair up the same way).
_FOLD = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


def nesting_exceeds(data: bytes | str, limit: int) -> bool:
    """Whether the JSON text ``data`` nests deeper than ``limit`` levels.

    Linear in the text for the usual case (at most ``limit`` brackets in all: two
    ``count`` calls); otherwise strings are cut out and innermost bracket pairs removed
    one level per pass, so the cost is the text's length times its depth, capped at
    ``limit`` passes. Text that is not valid JSON gets an answer that errs towards True
    when it opens more than ``limit`` brackets it never closes.
    """
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= limit:
            return False
        data = data.encode("utf-8", "surrogatepass")
    elif data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Drop escaped backslashes, then escaped quotes: every '"' left opens or closes a
    # string, so the even pieces of a split on it are the text outside strings.
    unescaped = bytes(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_FOLD, _NOT_BRACKETS)
    depth = 0
    while True:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        depth += 1
        if depth > limit:
            return True
        brackets = shorter
    return brackets.count(b"[") > limit


def may_hold_surrogate(data: bytes | str) -> bool:
    """Whether ``data`` (JSON text) has a ``\\uD800``-``\\uDFFF`` escape: a cheap pre-check
    before :func:`lone_surrogate` (valid pairs and escaped backslashes also match)."""
    if isinstance(data, str):
        return "\\u" in data and _SURROGATE_ESCAPE_TEXT.search(data) is not None
    return b"\\u" in data and _SURROGATE_ESCAPE.search(data) is not None


# What a number needs to leave a double's range (1.8e308): an exponent of three digits
# or more (``e400``, ``E+400``), or else at least 210 digits in a row (an exponent of
# two digits adds at most 99: ``"9" * 300 + "e9"`` overflows). Each byte is mapped to its class
# (a digit to "0"; e, E and + to "e"; anything else to a space) and the classes are
# searched as substrings: about 0.7 ms per MB, where a regular expression took 18 ms.
# Strings that look alike only cost a walk.
_FLOAT_MAX = 1.7976931348623157e308
_NUMBER_CLASSES = bytes(
    0x30 if 0x30 <= byte <= 0x39 else 0x65 if byte in b"eE+" else 0x20 for byte in range(256)
)
_DIGITS_210 = b"0" * 210


def may_hold_huge_number(data: bytes | str) -> bool:
    """Whether the JSON text ``data`` may hold a number beyond a double's range (it
    decodes to infinity, or to an int serde_json cannot read): a cheap pre-check before
    :func:`non_finite_path`."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    classes = data.translate(_NUMBER_CLASSES)
    return b"e000" in classes or _DIGITS_210 in classes


def non_finite_path(value: Any, root: str = "") -> str | None:
    """Where in a decoded JSON value the first infinite or NaN float, or integer beyond
    a double's range (which serde_json cannot read), is, as a dotted path
    (``payload.items.3``, the form of JSON-RPC's invalid-params field names), or None.
    Iterative: no nesting exhausts the stack."""
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return path or "value"
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > _FLOAT_MAX:
                return path or "value"
        elif isinstance(item, dict):
            prefix = f"{path}." if path else ""
            stack.extend((f"{prefix}{key}", sub) for key, sub in reversed(item.items()))
        elif isinstance(item, list):
            prefix = f"{path}." if path else ""
            stack.extend(
                (f"{prefix}{index}", sub) for index, sub in reversed(list(enumerate(item)))
            )
    return None


def int_or_infinity(literal: str) -> int | float:
    """A JSON integer literal (``json``'s ``parse_int`` hook) as an ``int``, or as an
    infinite float when it is beyond a double's range, so :func:`non_finite_path` names
    it like ``1e400``. Such an integer is valid JSON, but serde_json (Reflow's client)
    reads any integer beyond u64 as a double and fails the whole frame on one that
    overflows ("number out of range"); and Python's ``int()`` refuses more than 4,300
    digits (``sys.get_int_max_str_digits``) with advice meant for a programmer."""
    if len(literal) < 309:  # at most 308 digits: below 1e308, within range
        return int(literal)
    number = float(literal)
    return number if number in (float("inf"), float("-inf")) else int(literal)


def huge_number_message(path: str) -> str:
    """The error text for a number that overflows a 64-bit float."""
    return (
        f"{path}: the number is outside the range of a 64-bit float (about 1.8e308) and "
        "would become infinity, which JSON cannot carry: send it as a string"
    )


_probe = json.JSONEncoder(ensure_ascii=False, allow_nan=True, check_circular=False)


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a decoded JSON value (keys included) as ``'U+D800'``,
    or None when every string is valid Unicode."""
    try:
        _probe.encode(value).encode("utf-8")
    except UnicodeEncodeError as error:
        return f"U+{ord(error.object[error.start]):04X}"
    except (ValueError, TypeError, RecursionError):
        return None
    return None


def surrogate_message(what: str, code_point: str) -> str:
    """The error text for a value holding a lone surrogate."""
    return (
        f"{what} holds a lone surrogate ({code_point}), which is not valid Unicode: "
        "UTF-8 and so JSON-RPC cannot carry it (send bytes as base64, or clean the text)"
    )


def depth_message(what: str, limit: int) -> str:
    """The error text for a value nested deeper than ``limit``."""
    return f"{what} nests deeper than {limit} levels (the limit)"
