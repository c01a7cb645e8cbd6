"""The buffered, per-actor-locked transaction both stores share.

Design (no lost updates, also across processes):

1. The lock is taken lazily, on the transaction's FIRST state access, and held
   until commit or abort. A stateless call never locks and never touches the store.
2. It has two layers: an in-process FIFO ``asyncio.Lock`` per ``(namespace,
   actor_id)`` (:class:`.locks.KeyedLocks`), then a cross-process lock the store
   provides (a Redis lease key, or a file lock beside the SQLite file). One
   deadline (``lock_timeout``) bounds the wait for both; past it the call gets
   ``state_error: timed out ... waiting for the state lock of actor X``.
3. Reads go to the store (or to this transaction's own buffered writes); writes
   are encoded at once (so a bad value fails the ``set_state`` that passed it) and
   buffered; commit hands them all to the store to apply atomically together with
   the lock release, after checking the lock is still ours.

A store implements the four ``_`` hooks below.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from typing import Literal

from ..errors import StateError
from ..vocabulary import JSON
from .base import StateTransaction
from .codec import (
    StateValueError,
    StoredValueError,
    add_number,
    decode_value,
    encode_json,
    encode_value,
    state_key,
)
from .locks import KeyedLocks

log = logging.getLogger(__name__)

Writes = dict[str, bytes | None]
"""Buffered writes: store key -> encoded value, or None for a delete."""


class ValueCodec:
    """How a store encodes values: the compression threshold and the size cap."""

    def __init__(self, *, threshold: int, level: int = 3, max_size: int) -> None:
        self.threshold = threshold
        self.level = level
        self.max_size = max_size

    def encode(self, value: JSON) -> bytes:
        return encode_value(
            value, threshold=self.threshold, level=self.level, max_size=self.max_size
        )

    def encode_counter(self, value: int | float) -> bytes:
        # Never compressed: Redis INCRBY (Reflow's own counters) reads plain digits.
        return encode_json(value, max_size=self.max_size)

    def decode(self, raw: bytes) -> JSON:
        return decode_value(raw, max_size=self.max_size)


class LockedTransaction(StateTransaction):
    """Buffers writes, reads its own writes, holds the actor's lock while in use."""

    def __init__(
        self,
        *,
        store_name: str,
        namespace: str,
        actor_id: str,
        codec: ValueCodec,
        local_locks: KeyedLocks,
        lock_timeout: float,
    ) -> None:
        self.touched = False
        self.namespace = namespace
        self.actor_id = actor_id
        self._store_name = store_name
        self._codec = codec
        self._local_locks = local_locks
        self._lock_timeout = lock_timeout
        self._writes: Writes = {}
        self._phase: Literal["new", "locking", "locked", "committed", "aborted"] = "new"
        self._locking: asyncio.Lock | None = None

    # -- hooks a store implements --------------------------------------------------

    @abc.abstractmethod
    async def _acquire_shared(self, deadline: float) -> bool:
        """Take the cross-process lock before ``deadline`` (monotonic); False on timeout."""

    @abc.abstractmethod
    async def _release_shared(self) -> None:
        """Release the cross-process lock if this transaction holds it; best effort."""

    @abc.abstractmethod
    async def _read(self, key: str) -> bytes | None:
        """The stored bytes under the store key ``key``, or None."""

    @abc.abstractmethod
    async def _apply(self, writes: Writes) -> None:
        """Apply ``writes`` atomically, and release the shared lock, if it is still ours."""

    # -- the StateHandler API --------------------------------------------------------

    async def get(self, key: str, default: JSON = None) -> JSON:
        skey = self._key(key)
        await self._lock()
        if skey in self._writes:
            raw = self._writes[skey]
        else:
            raw = await self._read(skey)
        if raw is None:
            return default
        try:
            return self._codec.decode(raw)
        except StoredValueError as error:
            raise self._error(f"cannot read key {skey!r}: {error}") from None

    async def set(self, key: str, value: JSON) -> None:
        skey = self._key(key)
        try:
            encoded = self._codec.encode(value)
        except StateValueError as error:
            raise StateError(f"set_state({key!r}): {error}", kind="script_error") from None
        await self._lock()
        self._writes[skey] = encoded

    async def delete(self, key: str) -> None:
        skey = self._key(key)
        await self._lock()
        self._writes[skey] = None

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        current = await self.get(key, None)
        try:
            result = add_number(current, by)
            encoded = self._codec.encode_counter(result)
        except StateValueError as error:
            raise StateError(f"increment({key!r}): {error}", kind="script_error") from None
        self._writes[self._key(key)] = encoded
        return result

    async def commit(self) -> None:
        if self._phase in ("committed", "aborted"):
            return
        if self._phase == "new":
            self._phase = "committed"
            return
        if self._phase == "locking":  # a lock wait was interrupted: nothing to apply
            await self.abort()
            return
        try:
            await self._apply(self._writes)
        except BaseException:
            await self._release_shared()
            raise
        finally:
            self._phase = "committed"
            self._writes = {}
            self._local_locks.release(self._lock_name)

    async def abort(self) -> None:
        if self._phase in ("committed", "aborted"):
            return
        held = self._phase in ("locking", "locked")
        self._phase = "aborted"
        self._writes = {}
        if held:
            try:
                await self._release_shared()
            finally:
                self._local_locks.release(self._lock_name)

    # -- internals -------------------------------------------------------------------

    @property
    def _lock_name(self) -> tuple[str, str]:
        return (self.namespace, self.actor_id)

    @property
    def actor_label(self) -> str:
        return f"{self.namespace}:{self.actor_id}"

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise StateError(
                f"state keys are strings, not {type(key).__name__}", kind="script_error"
            )
        return state_key(self.namespace, self.actor_id, key)

    def _error(self, message: str) -> StateError:
        return StateError(f"state store {self._store_name}: {message}")

    async def _lock(self) -> None:
        if self._phase == "locked":
            return
        if self._locking is None:
            self._locking = asyncio.Lock()
        async with self._locking:  # state calls of one script may overlap (gather)
            if self._is_locked():  # another state call of this script just took it
                return
            if self._phase != "new":
                raise self._error(f"the state transaction of actor {self.actor_label} is finished")
            await self._take_lock()

    def _is_locked(self) -> bool:
        return self._phase == "locked"

    async def _take_lock(self) -> None:
        self.touched = True
        deadline = time.monotonic() + self._lock_timeout
        try:
            await self._local_locks.acquire(self._lock_name, self._lock_timeout)
        except TimeoutError:
            raise self._lock_timeout_error() from None
        self._phase = "locking"
        try:
            acquired = await self._acquire_shared(deadline)
        except BaseException:
            await self.abort()
            raise
        if not acquired:
            await self.abort()
            raise self._lock_timeout_error()
        self._phase = "locked"

    def _lock_timeout_error(self) -> StateError:
        return self._error(
            f"timed out after {self._lock_timeout:g} s waiting for the state lock of actor "
            f"{self.actor_label} (another call of this actor holds it)"
        )


async def sleep_until_retry(deadline: float, attempt: int) -> bool:
    """Back off before the next try for a cross-process lock; False when out of time."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    # 1 ms, 2 ms, 4 ms ... up to 20 ms, with jitter so processes do not poll in step.
    delay = min(0.020, 0.001 * (2 ** min(attempt, 5)))
    delay *= 0.5 + random.random()
    await asyncio.sleep(min(delay, remaining))
    return True
