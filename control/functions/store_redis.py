"""Deployed functions in Redis, beside the actor state (one client, one connection pool).

Keys, all under ``microsandbox:fn:``:

- ``code:<digest>``: the code record (a string), with a TTL;
- ``fn:<id>``: one deployment, a hash of :meth:`FunctionRecord.to_fields`, with a TTL;
- ``index``: a sorted set of deployment ids scored by their expiry time (ms), so the
  live ones can be counted without a scan;
- ``deps:<set key>``: a dependency lock, with a TTL.

Creating (with the count check), touching and deleting are Lua scripts: Redis runs a
script as one atomic unit, so two nodes deploying at once cannot both take the last
place under ``max_functions``. Scripts read the time with ``TIME``, so every node
uses Redis's clock, not its own.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from ..state import RedisStore
from .model import FunctionRecord, FunctionState
from .store import FunctionStore

PREFIX = "microsandbox:fn:"
INDEX = PREFIX + "index"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] index, KEYS[2] deployment, KEYS[3] code; ARGV[1] ttl ms, ARGV[2] limit,
# ARGV[3] id, then field/value pairs.
_CREATE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
return 1
"""
)

# KEYS[1] index, KEYS[2] deployment; ARGV[1] ttl ms, ARGV[2] id, ARGV[3] code key prefix.
_TOUCH = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return false
end
redis.call('HINCRBY', KEYS[2], 'invocations', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
local digest = redis.call('HGET', KEYS[2], 'digest')
if digest then redis.call('PEXPIRE', ARGV[3] .. digest, ARGV[1]) end
return redis.call('HGETALL', KEYS[2])
"""
)

# KEYS[1] deployment; ARGV[1] state, ARGV[2] error.
_SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2])
return 1
"""

# KEYS[1] index, KEYS[2] deployment; ARGV[1] id.
_DELETE = """
local fields = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return fields
"""

# KEYS[1] index.
_COUNT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _record(flat: Any) -> FunctionRecord | None:
    """A record from HGETALL's reply (a flat list from a script, a dict from redis-py)."""
    if not flat:
        return None
    if isinstance(flat, dict):
        pairs = list(flat.items())
    else:
        pairs = list(zip(flat[::2], flat[1::2], strict=False))
    fields = {_text(key): _text(value) for key, value in pairs}
    try:
        return FunctionRecord.from_fields(fields)
    except (KeyError, ValueError):
        return None  # not ours, or damaged: treated as not deployed


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisFunctionStore(FunctionStore):
    """Functions in the Redis of the given actor state store."""

    def __init__(self, state: RedisStore) -> None:
        self._state = state
        self._client = state.client
        self.name = state.name
        self._create = self._client.register_script(_CREATE)
        self._touch = self._client.register_script(_TOUCH)
        self._set_state = self._client.register_script(_SET_STATE)
        self._delete = self._client.register_script(_DELETE)
        self._count = self._client.register_script(_COUNT)

    def _failed(self, error: BaseException, doing: str) -> Exception:
        return self._state.failure(error, doing)

    async def save_code(self, digest: str, data: bytes, ttl: float) -> None:
        try:
            await self._client.set(PREFIX + "code:" + digest, data, px=_ms(ttl))
        except (RedisError, OSError) as error:
            raise self._failed(error, "store a function's code") from None

    async def load_code(self, digest: str, ttl: float) -> bytes | None:
        try:
            value: Any = await self._client.getex(PREFIX + "code:" + digest, px=_ms(ttl))
        except (RedisError, OSError) as error:
            raise self._failed(error, "read a function's code") from None
        return value if isinstance(value, bytes) else None

    async def create(self, record: FunctionRecord, ttl: float, limit: int) -> bool:
        args: list[str | int] = [_ms(ttl), limit, record.id]
        for key, value in record.to_fields().items():
            args += [key, value]
        keys = [INDEX, PREFIX + "fn:" + record.id, PREFIX + "code:" + record.digest]
        try:
            created = await self._create(keys=keys, args=args)
        except (RedisError, OSError) as error:
            raise self._failed(error, "record a deployment") from None
        return bool(created == 1)

    async def get(self, function_id: str) -> FunctionRecord | None:
        try:
            fields: Any = await self._client.hgetall(PREFIX + "fn:" + function_id)
        except (RedisError, OSError) as error:
            raise self._failed(error, "read a deployment") from None
        return _record(fields)

    async def touch(self, function_id: str, ttl: float) -> FunctionRecord | None:
        keys = [INDEX, PREFIX + "fn:" + function_id]
        try:
            flat = await self._touch(keys=keys, args=[_ms(ttl), function_id, PREFIX + "code:"])
        except (RedisError, OSError) as error:
            raise self._failed(error, "look up a function") from None
        return _record(flat)

    async def set_state(self, function_id: str, state: FunctionState, error: str = "") -> bool:
        try:
            changed = await self._set_state(
                keys=[PREFIX + "fn:" + function_id], args=[state, error]
            )
        except (RedisError, OSError) as failure:
            raise self._failed(failure, "update a deployment") from None
        return bool(changed == 1)

    async def delete(self, function_id: str) -> FunctionRecord | None:
        keys = [INDEX, PREFIX + "fn:" + function_id]
        try:
            flat = await self._delete(keys=keys, args=[function_id])
        except (RedisError, OSError) as error:
            raise self._failed(error, "remove a deployment") from None
        return _record(flat)

    async def count(self) -> int:
        try:
            return int(await self._count(keys=[INDEX]))
        except (RedisError, OSError) as error:
            raise self._failed(error, "count deployments") from None

    async def load_lock(self, key: str, ttl: float) -> bytes | None:
        try:
            value: Any = await self._client.getex(PREFIX + "deps:" + key, px=_ms(ttl))
        except (RedisError, OSError) as error:
            raise self._failed(error, "read a dependency lock") from None
        return value if isinstance(value, bytes) else None

    async def save_lock(self, key: str, data: bytes, ttl: float) -> None:
        try:
            await self._client.set(PREFIX + "deps:" + key, data, px=_ms(ttl))
        except (RedisError, OSError) as error:
            raise self._failed(error, "store a dependency lock") from None
