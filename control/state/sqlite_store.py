"""Actor state in a local SQLite file: the embedded default when no Redis is configured.

Same semantics as the Redis store, same key layout and value codec, one table
``state(key TEXT PRIMARY KEY, value BLOB)`` in WAL mode. The stdlib ``sqlite3``
connection lives in one dedicated worker thread, so the event loop never blocks on
disk and the connection is only ever used from one thread.

Cross-process design: SQLite's ``BEGIN IMMEDIATE`` serialises writers, but a call
reads state, runs the script, and writes later, and two processes doing that for
one actor would lose updates. So the per-actor lock has a cross-process half here
too: an exclusive open-file-description lock (Linux ``F_OFD_SETLK``) on one byte of
a sidecar file ``<db>.locks``, at an offset derived from the actor's name (a
56-bit hash, so distinct actors do not contend). OFD locks belong to the store's
own file handle, so two stores in one process exclude each other as two processes
do, and the kernel drops the lock when the handle closes or the process dies: no
lease or expiry is needed. Commit writes everything in one ``BEGIN IMMEDIATE`` transaction,
then the lock is released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import struct
from collections.abc import Callable
from typing import TypeVar

from ..errors import StateError
from .base import StateStore, StateTransaction
from .codec import DEFAULT_MAX_VALUE_SIZE
from .locks import KeyedLocks
from .transaction import LockedTransaction, ValueCodec, Writes, sleep_until_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
_UPSERT = (
    "INSERT INTO state (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


class SqliteStore(StateStore):
    """State in the SQLite file at ``path`` (created on first use; its folder must exist)."""

    def __init__(
        self,
        path: str,
        *,
        compression_threshold: int = 1024,
        compression_level: int = 3,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        lock_timeout: float = 20.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.name = f"sqlite {path}"
        self.codec = ValueCodec(
            threshold=compression_threshold, level=compression_level, max_size=max_value_size
        )
        self.lock_timeout = lock_timeout
        self.local_locks = KeyedLocks()
        self._busy_timeout = busy_timeout
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only in the worker thread
        self.lock_fd: int | None = None
        self._closed = False

    async def open(self) -> None:
        problem = await self.health()
        if problem is None:
            log.info("state store: %s", self.name)
        else:
            log.warning("state store %s is not usable yet: %s", self.name, problem)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            await self._in_thread(self._close_sync)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def health(self) -> str | None:
        try:
            await self.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except Exception as error:
            return str(error)
        return None

    def transaction(self, namespace: str, actor_id: str) -> StateTransaction:
        return SqliteTransaction(self, namespace, actor_id)

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` with the connection in the worker thread; ``state_error``."""
        if self._closed:
            raise StateError(f"state store {self.name} is closed")
        try:
            return await self._in_thread(lambda: operation(self._connection()))
        except (sqlite3.Error, OSError) as error:
            raise StateError(f"state store {self.name}: {error}") from None

    async def _in_thread(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sqlite-state"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def _connection(self) -> sqlite3.Connection:
        """The open connection (worker thread only), opening the file on first use."""
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            if self.lock_fd is None:
                self.lock_fd = os.open(self.path + ".locks", os.O_RDWR | os.O_CREAT, 0o600)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # also drops any file lock this process still holds
            self.lock_fd = None


class SqliteTransaction(LockedTransaction):
    """One call's state in SQLite; see the module docstring for the lock design."""

    def __init__(self, store: SqliteStore, namespace: str, actor_id: str) -> None:
        super().__init__(
            store_name=store.name,
            namespace=namespace,
            actor_id=actor_id,
            codec=store.codec,
            local_locks=store.local_locks,
            lock_timeout=store.lock_timeout,
        )
        self._store = store
        digest = hashlib.blake2b(f"{namespace}:{actor_id}".encode(), digest_size=7).digest()
        self._offset = int.from_bytes(digest, "big")
        self._locked_fd: int | None = None

    async def _acquire_shared(self, deadline: float) -> bool:
        await self._store.run(lambda conn: None)  # opens the file (and the lock file)
        fd = self._store.lock_fd
        if fd is None:
            raise self._error("the lock file is not open")
        attempt = 0
        while True:
            try:
                _set_lock(fd, fcntl.F_WRLCK, self._offset)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    raise self._error(f"cannot lock actor {self.actor_label}: {error}") from None
            else:
                self._locked_fd = fd
                return True
            if not await sleep_until_retry(deadline, attempt):
                return False
            attempt += 1

    async def _release_shared(self) -> None:
        fd, self._locked_fd = self._locked_fd, None
        if fd is not None and fd == self._store.lock_fd:
            try:
                _set_lock(fd, fcntl.F_UNLCK, self._offset)
            except OSError as error:
                log.warning("could not unlock the state of %s: %s", self.actor_label, error)

    async def _read(self, key: str) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            value = row[0]
            return value.encode() if isinstance(value, str) else bytes(value)

        return await self._store.run(read)

    async def _apply(self, writes: Writes) -> None:
        if writes:
            items = list(writes.items())
            await self._store.run(lambda conn: _write_all(conn, items))
        await self._release_shared()


def _set_lock(fd: int, lock_type: int, offset: int) -> None:
    """Set or clear an OFD lock on the byte at ``offset`` without waiting (Linux)."""
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
    request = struct.pack("hhqqi4x", lock_type, os.SEEK_SET, offset, 1, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)


def _write_all(conn: sqlite3.Connection, items: list[tuple[str, bytes | None]]) -> None:
    """All writes in one ``BEGIN IMMEDIATE`` transaction (all or none)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, value in items:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                conn.execute(_UPSERT, (key, value))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
