"""Key layout and value encoding of actor state, shared by every store (sans-I/O).

A value is kept under ``{namespace}:{actor_id}:{key}`` as compact, strict JSON text
(what Reflow's own ``RedisActorState`` reads and writes), zstd-compressed when the
text is longer than the threshold. A stored value is recognised as compressed by
the zstd frame magic, which no JSON text starts with, so plain and compressed
values can be mixed freely and a threshold change needs no migration.
"""

from __future__ import annotations

import json
import math

from ..compression import CompressionError, is_zstd, zstd_compress, zstd_decompress
from ..errors import MicroSandboxError
from ..jsonlimits import MAX_STATE_VALUE_BYTES
from ..vocabulary import JSON, strict_json

DEFAULT_MAX_VALUE_SIZE = MAX_STATE_VALUE_BYTES


class StateValueError(MicroSandboxError, ValueError):
    """A value cannot be stored (not strict JSON, or too large); the script's fault."""


class StoredValueError(MicroSandboxError, ValueError):
    """What the store holds under a key is not a value we can read (corrupt, not JSON)."""


def state_key(namespace: str, actor_id: str, key: str) -> str:
    """The store key of one state entry, exactly as Reflow lays it out."""
    return f"{namespace}:{actor_id}:{key}"


def lock_key(namespace: str, actor_id: str) -> str:
    """The key of an actor's distributed state lock (outside the actor's key space)."""
    return f"microsandbox:lock:{namespace}:{actor_id}"


def encode_json(value: JSON, *, max_size: int = DEFAULT_MAX_VALUE_SIZE) -> bytes:
    """Compact strict JSON (no NaN/Infinity) as UTF-8; :class:`StateValueError` if impossible."""
    try:
        text = strict_json(value)
    except (TypeError, ValueError, RecursionError) as error:
        raise StateValueError(f"the value is not strict JSON: {error}") from None
    data = _encode_utf8(text)
    if len(data) > max_size:
        raise StateValueError(
            f"the value is {len(data)} bytes as JSON, more than the limit of {max_size}"
        )
    return data


def encode_value(
    value: JSON,
    *,
    threshold: int,
    level: int = 3,
    max_size: int = DEFAULT_MAX_VALUE_SIZE,
) -> bytes:
    """The bytes to store for ``value``: JSON text, zstd-compressed above ``threshold``.

    ``threshold`` 0 turns compression off. Raises :class:`StateValueError`.
    """
    data = encode_json(value, max_size=max_size)
    if threshold > 0 and len(data) > threshold:
        return zstd_compress(data, level)
    return data


def decode_value(raw: bytes, *, max_size: int = DEFAULT_MAX_VALUE_SIZE) -> JSON:
    """The value held in ``raw`` (plain or compressed JSON); :class:`StoredValueError`."""
    if is_zstd(raw):
        try:
            raw = zstd_decompress(raw, max_size)
        except CompressionError as error:
            raise StoredValueError(f"the stored value cannot be decompressed: {error}") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise StoredValueError(f"the stored value is not JSON: {error}") from None


def add_number(current: JSON, by: int | float) -> int | float:
    """``current + by`` for :meth:`StateTransaction.increment`; ``None`` counts as 0.

    Booleans are refused (they are JSON ``true``/``false``, not numbers), and so is a
    float result that is not finite. Raises :class:`StateValueError`.
    """
    if isinstance(by, bool) or not isinstance(by, int | float):
        raise StateValueError(f"increment step must be a number, not {type(by).__name__}")
    if current is None:
        current = 0
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise StateValueError(
            f"cannot increment a stored {_json_type(current)}: only numbers can be incremented"
        )
    result = current + by
    if isinstance(result, float) and not math.isfinite(result):
        raise StateValueError("the incremented value is not a finite number")
    return result


def _encode_utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates from the script
        raise StateValueError(f"the value is not valid Unicode: {error.reason}") from None


def _json_type(value: JSON) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__
