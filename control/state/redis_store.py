"""Actor state in Redis, through redis-py's asyncio client (one connection pool per process).

The cross-process half of the per-actor lock (see :mod:`.transaction`) is a lease
key ``microsandbox:lock:{namespace}:{actor_id}`` set with ``SET key token NX PX
ttl``, refreshed every ``ttl / 3`` while held, and released by a compare-and-delete
script, so a holder whose lease ran out can never release (or commit under)
another's lock. Commit runs one Lua script that checks the lease is still ours,
applies every buffered SET/DEL and deletes the lease: Redis runs a script as one
atomic unit, like MULTI/EXEC, and the check makes a late commit fail instead of
overwriting a newer holder's writes.

Failures (Redis down, timeouts, refused auth) become ``state_error`` at once: the
socket timeouts are small and a command is retried once, only when its connection
broke (which is also how the pool reconnects after Redis comes back). Once an
operation timed out (Redis frozen, or its host gone), a breaker (:mod:`.breaker`)
fails the other state operations at once instead of letting each wait out the socket
timeout, and lets one through every half second to see whether Redis is back. A
refused connection fails fast by itself and does not open it, so that state calls
succeed again as soon as a restarted Redis listens.

Outcomes under faults: before a commit with writes, the lease is cut to the socket
timeout, so a commit that reaches a frozen Redis too late (after the client gave up
on it) finds its lease expired and is not applied; a commit whose connection broke
after it was sent is reported as possibly applied. A lock whose acquire timed out
(it may have been taken) is released when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StateError
from .base import StateStore, StateTransaction
from .breaker import Breaker
from .codec import DEFAULT_MAX_VALUE_SIZE, lock_key
from .locks import KeyedLocks
from .transaction import LockedTransaction, ValueCodec, Writes, sleep_until_retry

log = logging.getLogger(__name__)

# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms. Idempotent, so a retried call is safe.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lock; ARGV[1] token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] lock, KEYS[2..n] state keys; ARGV[1] token, then per state key an
# operation ('S' set / 'D' delete) and a value (ignored for deletes).
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do
  if ARGV[2 * i - 2] == 'S' then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1])
  else
    redis.call('DEL', KEYS[i])
  end
end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisStore(StateStore):
    """State in one Redis (the URL may carry a password: ``redis://:secret@host:6379/0``)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout: float = 2.0,
        compression_threshold: int = 1024,
        compression_level: int = 3,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        lock_timeout: float = 20.0,
        lock_ttl: float = 10.0,
    ) -> None:
        try:
            # A blocking pool: past max_connections a command waits (up to the socket
            # timeout) for a free connection instead of failing at once.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=socket_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # One retry, only for a broken connection (e.g. Redis restarted):
                # the pool then dials again. Timeouts are not retried: fail fast.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                health_check_interval=30,
            )
        except ValueError as error:
            raise ValueError(f"redis.url is not a valid Redis URL: {error}") from None
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.url = url  # may hold the password: never put it in a message
        self.name = f"redis at {_describe(self._client.connection_pool.connection_kwargs)}"
        self.codec = ValueCodec(
            threshold=compression_threshold, level=compression_level, max_size=max_value_size
        )
        self.lock_timeout = lock_timeout
        self.lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self.local_locks = KeyedLocks()
        self.acquire_script = self._client.register_script(_ACQUIRE)
        self.refresh_script = self._client.register_script(_REFRESH)
        self.release_script = self._client.register_script(_RELEASE)
        self.commit_script = self._client.register_script(_COMMIT)
        self.socket_timeout_ms = max(1, int(socket_timeout * 1000))
        self.breaker = Breaker(probe_interval=min(0.5, socket_timeout))
        # (lock key, token) of acquires whose outcome is unknown: released on recovery.
        self._orphans: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> aioredis.Redis:
        """The shared client (one pool per process); tests and metrics may use it."""
        return self._client

    async def open(self) -> None:
        problem = await self.health()
        if problem is None:
            log.info("state store: %s", self.name)
        else:
            log.warning("state store %s is not available yet: %s", self.name, problem)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()
        await self._client.connection_pool.disconnect()

    async def health(self) -> str | None:
        try:
            await self._client.ping()
        except AuthenticationError as error:
            return f"{self.name} refused the credentials: {error}"
        except (RedisError, OSError) as error:
            self.failure(error, "answer a ping")
            return f"{self.name} unreachable: {_reason(error)}"
        self.answered()
        return None

    def transaction(self, namespace: str, actor_id: str) -> StateTransaction:
        return RedisTransaction(self, namespace, actor_id)

    def failure(self, error: BaseException, doing: str, *, note: str = "") -> StateError:
        """The ``state_error`` for a Redis failure while ``doing`` something; a timeout
        opens the breaker."""
        if _timed_out(error):
            if not self.breaker.open:
                log.warning("state store %s does not answer: %s", self.name, _reason(error))
            self.breaker.failed(_reason(error))
        return StateError(
            f"state store {self.name} failed to {doing}: {_reason(error)}{note}"
        )

    def guard(self, doing: str) -> None:
        """Raise the ``state_error`` at once while Redis is known unreachable (unless
        this operation is the probe that finds out whether it is back)."""
        if not self.breaker.allow():
            raise StateError(
                f"state store {self.name} {self.breaker.describe()}: did not try to {doing}"
            )

    def answered(self) -> None:
        """Redis answered: close the breaker; after an outage, release orphaned locks."""
        if self.breaker.succeeded():
            log.warning("state store %s answers again", self.name)
        if self._orphans:
            orphans, self._orphans = self._orphans, set()
            task = asyncio.ensure_future(self._release_orphans(orphans))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def orphan(self, lock: str, token: str) -> None:
        """A lock this process may hold without knowing it: release it on recovery."""
        self._orphans.add((lock, token))

    async def _release_orphans(self, orphans: set[tuple[str, str]]) -> None:
        for lock, token in orphans:
            try:
                await self.release_script(keys=[lock], args=[token])
            except (RedisError, OSError):
                self._orphans.add((lock, token))  # its lease runs out by itself anyway


class RedisTransaction(LockedTransaction):
    """One call's state in Redis; see the module docstring for the lock protocol."""

    def __init__(self, store: RedisStore, namespace: str, actor_id: str) -> None:
        super().__init__(
            store_name=store.name,
            namespace=namespace,
            actor_id=actor_id,
            codec=store.codec,
            local_locks=store.local_locks,
            lock_timeout=store.lock_timeout,
        )
        self._store = store
        # The lock's key and token are made when the lock is first needed: most calls
        # touch no state, and the token costs a getrandom(2) system call.
        self._lock_key = ""
        self._token = ""
        self._attempted = False
        self._refresher: asyncio.Task[None] | None = None

    async def _acquire_shared(self, deadline: float) -> bool:
        store = self._store
        if not self._token:
            self._lock_key = lock_key(self.namespace, self.actor_id)
            self._token = secrets.token_hex(16)
        attempt = 0
        while True:
            store.guard(f"lock actor {self.actor_label}")
            self._attempted = True
            try:
                got = await store.acquire_script(
                    keys=[self._lock_key], args=[self._token, store.lock_ttl_ms]
                )
            except (RedisError, OSError) as error:
                self._attempted = False
                store.orphan(self._lock_key, self._token)  # it may have been taken
                raise store.failure(error, f"lock actor {self.actor_label}") from None
            store.answered()
            if got == 1:
                self._refresher = asyncio.create_task(self._keep_refreshed())
                return True
            if not await sleep_until_retry(deadline, attempt):
                return False
            attempt += 1

    async def _release_shared(self) -> None:
        self._stop_refreshing()
        if not self._attempted:
            return
        self._attempted = False
        store = self._store
        if not store.breaker.allow():
            store.orphan(self._lock_key, self._token)
            return
        try:
            await store.release_script(keys=[self._lock_key], args=[self._token])
        except (RedisError, OSError) as error:
            # Released on recovery; the lease runs out by itself within lock_ttl anyway.
            store.orphan(self._lock_key, self._token)
            store.failure(error, "release a lock")
            log.info("could not release the state lock of %s: %s", self.actor_label, error)
        else:
            store.answered()

    async def _read(self, key: str) -> bytes | None:
        self._store.guard(f"read {key!r}")
        try:
            value: Any = await self._store.client.get(key)
        except (RedisError, OSError) as error:
            raise self._store.failure(error, f"read {key!r}") from None
        self._store.answered()
        if value is None or isinstance(value, bytes):
            return value
        raise self._store.failure(TypeError(type(value).__name__), f"read {key!r}")

    async def _apply(self, writes: Writes) -> None:
        self._stop_refreshing()
        store = self._store
        doing = f"commit the state of {self.actor_label}"
        store.guard(doing)
        keys: list[str] = [self._lock_key]
        args: list[str | bytes] = [self._token]
        for key, value in writes.items():
            keys.append(key)
            args.extend(("D", b"") if value is None else ("S", value))
        if writes:
            # Cut the lease to the socket timeout: a commit that reaches Redis only
            # after we gave up on it (Redis frozen meanwhile) finds it expired.
            try:
                alive = await store.refresh_script(
                    keys=[self._lock_key], args=[self._token, store.socket_timeout_ms]
                )
            except (RedisError, OSError) as error:
                raise store.failure(error, doing) from None
            if alive != 1:
                raise self._error(
                    f"lost the state lock of actor {self.actor_label} before commit "
                    "(its lease expired); the call's state writes were not applied"
                )
        try:
            applied = await store.commit_script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            note = ""
            if isinstance(error, RedisConnectionError) and not _refused(error):
                note = "; the connection broke after the commit was sent: it may have been applied"
            raise store.failure(error, doing, note=note) from None
        store.answered()
        self._attempted = False
        if applied != 1:
            raise self._error(
                f"lost the state lock of actor {self.actor_label} before commit "
                "(its lease expired); the call's state writes were not applied"
            )

    def _stop_refreshing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def _keep_refreshed(self) -> None:
        store = self._store
        interval = store.lock_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            # A failed refresh is retried next time; commit checks the lease anyway.
            with contextlib.suppress(RedisError, OSError):
                alive = await store.refresh_script(
                    keys=[self._lock_key], args=[self._token, store.lock_ttl_ms]
                )
                if alive != 1:
                    log.warning("the state lock of %s expired while held", self.actor_label)
                    return


def _describe(kwargs: dict[str, Any]) -> str:
    """``host:port/db`` or the socket path, never the password."""
    if "path" in kwargs:
        where = str(kwargs["path"])
    else:
        where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    db = kwargs.get("db", 0)
    return where if not db else f"{where}/{db}"


def _timed_out(error: BaseException) -> bool:
    """Whether Redis did not answer in time (frozen, or unreachable): each such failure
    costs a socket timeout, unlike a refused connection."""
    return isinstance(error, RedisTimeoutError | TimeoutError)


def _refused(error: BaseException) -> bool:
    """Whether the connection was refused, so that nothing was sent."""
    cause: BaseException | None = error
    for _ in range(5):
        if isinstance(cause, ConnectionRefusedError):
            return True
        if cause is None:
            return False
        cause = cause.__cause__ or cause.__context__
    return "Connection refused" in str(error)


def _reason(error: BaseException) -> str:
    """A short reason: the OS's words (``Connection refused``) when a socket error is behind it."""
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno and not isinstance(cause, TimeoutError):
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    text = str(error).strip()
    return text or type(error).__name__
