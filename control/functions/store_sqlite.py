"""Deployed functions in the embedded SQLite file, beside the actor state (one node only).

Three tables of their own in the state store's file, used through that store's worker
thread and connection (:meth:`SqliteStore.run`): ``functions`` (one row per deployment),
``function_code`` (code by digest) and ``function_deps`` (dependency locks). Every row
carries ``expires_ms``: reads ignore expired rows, creating a deployment deletes them,
and the count check and the insert share one ``BEGIN IMMEDIATE`` transaction, so
several server processes on one file cannot exceed ``max_functions`` together.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from ..state import SqliteStore
from .model import FunctionRecord, FunctionState
from .store import FunctionStore

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS functions (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, runtime TEXT NOT NULL,
        handler TEXT NOT NULL, digest TEXT NOT NULL, timeout_seconds INTEGER NOT NULL,
        state TEXT NOT NULL, error TEXT NOT NULL, invocations INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS functions_expiry ON functions (expires_ms)",
    """CREATE TABLE IF NOT EXISTS function_code (
        digest TEXT PRIMARY KEY, record BLOB NOT NULL, expires_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS function_deps (
        key TEXT PRIMARY KEY, lock BLOB NOT NULL, expires_ms INTEGER NOT NULL)""",
)
_COLUMNS = (
    "id, name, runtime, handler, digest, timeout_seconds, state, error, invocations, created_ms"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _record(row: tuple[object, ...] | None) -> FunctionRecord | None:
    if row is None:
        return None
    names = [name.strip() for name in _COLUMNS.split(",")]
    try:
        return FunctionRecord.from_fields(
            {name: str(value) for name, value in zip(names, row, strict=True)}
        )
    except (KeyError, ValueError):
        return None


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteFunctionStore(FunctionStore):
    """Functions in the SQLite file of the given actor state store."""

    def __init__(self, state: SqliteStore) -> None:
        self._state = state
        self.name = state.name
        self._schema_ready = False

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def with_schema(conn: sqlite3.Connection) -> T:
            if not self._schema_ready:
                for statement in _SCHEMA:
                    conn.execute(statement)
                self._schema_ready = True
            return operation(conn)

        return await self._state.run(with_schema)

    async def save_code(self, digest: str, data: bytes, ttl: float) -> None:
        await self._upsert("function_code", "digest", "record", digest, data, ttl)

    async def _upsert(
        self, table: str, key_column: str, value_column: str, key: str, value: bytes, ttl: float
    ) -> None:
        """Insert or replace one row with a fresh expiry (names are constants)."""
        expires = _now_ms() + _ms(ttl)
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO {table} ({key_column}, {value_column}, expires_ms) VALUES (?, ?, ?) "
                f"ON CONFLICT({key_column}) DO UPDATE SET {value_column} = "
                f"excluded.{value_column}, expires_ms = excluded.expires_ms",
                (key, value, expires),
            )
        )

    async def load_code(self, digest: str, ttl: float) -> bytes | None:
        return await self._load_refreshed("function_code", "digest", "record", digest, ttl)

    async def _load_refreshed(
        self, table: str, key_column: str, value_column: str, key: str, ttl: float
    ) -> bytes | None:
        """A live row's value, its expiry pushed ``ttl`` ahead (names are constants)."""

        def load(conn: sqlite3.Connection) -> bytes | None:
            now = _now_ms()
            row = conn.execute(
                f"SELECT {value_column} FROM {table} WHERE {key_column} = ? AND expires_ms > ?",
                (key, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                f"UPDATE {table} SET expires_ms = ? WHERE {key_column} = ?", (now + _ms(ttl), key)
            )
            return bytes(row[0])

        return await self._run(load)

    async def create(self, record: FunctionRecord, ttl: float, limit: int) -> bool:
        def create(conn: sqlite3.Connection) -> bool:
            def work() -> bool:
                now = _now_ms()
                conn.execute("DELETE FROM functions WHERE expires_ms <= ?", (now,))
                conn.execute("DELETE FROM function_code WHERE expires_ms <= ?", (now,))
                conn.execute("DELETE FROM function_deps WHERE expires_ms <= ?", (now,))
                (held,) = conn.execute("SELECT COUNT(*) FROM functions").fetchone()
                if held >= limit:
                    return False
                fields = record.to_fields()
                conn.execute(
                    f"INSERT INTO functions ({_COLUMNS}, expires_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *(fields[name.strip()] for name in _COLUMNS.split(",")),
                        now + _ms(ttl),
                    ),
                )
                conn.execute(
                    "UPDATE function_code SET expires_ms = ? WHERE digest = ?",
                    (now + _ms(ttl), record.digest),
                )
                return True

            return _in_transaction(conn, work)

        return await self._run(create)

    async def get(self, function_id: str) -> FunctionRecord | None:
        row = await self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM functions WHERE id = ? AND expires_ms > ?",
                (function_id, _now_ms()),
            ).fetchone()
        )
        return _record(row)

    async def touch(self, function_id: str, ttl: float) -> FunctionRecord | None:
        def touch(conn: sqlite3.Connection) -> tuple[object, ...] | None:
            def work() -> tuple[object, ...] | None:
                now = _now_ms()
                expires = now + _ms(ttl)
                updated = conn.execute(
                    "UPDATE functions SET invocations = invocations + 1, expires_ms = ? "
                    "WHERE id = ? AND expires_ms > ?",
                    (expires, function_id, now),
                ).rowcount
                if not updated:
                    return None
                row: tuple[object, ...] = conn.execute(
                    f"SELECT {_COLUMNS} FROM functions WHERE id = ?", (function_id,)
                ).fetchone()
                conn.execute(
                    "UPDATE function_code SET expires_ms = ? WHERE digest = ?", (expires, row[4])
                )
                return row

            return _in_transaction(conn, work)

        return _record(await self._run(touch))

    async def set_state(self, function_id: str, state: FunctionState, error: str = "") -> bool:
        changed = await self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE functions SET state = ?, error = ? WHERE id = ? AND expires_ms > ?",
                    (state, error, function_id, _now_ms()),
                ).rowcount
            )
        )
        return bool(changed)

    async def delete(self, function_id: str) -> FunctionRecord | None:
        def delete(conn: sqlite3.Connection) -> tuple[object, ...] | None:
            def work() -> tuple[object, ...] | None:
                row: tuple[object, ...] | None = conn.execute(
                    f"SELECT {_COLUMNS} FROM functions WHERE id = ? AND expires_ms > ?",
                    (function_id, _now_ms()),
                ).fetchone()
                conn.execute("DELETE FROM functions WHERE id = ?", (function_id,))
                return row

            return _in_transaction(conn, work)

        return _record(await self._run(delete))

    async def count(self) -> int:
        (held,) = await self._run(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM functions WHERE expires_ms > ?", (_now_ms(),)
            ).fetchone()
        )
        return int(held)

    async def load_lock(self, key: str, ttl: float) -> bytes | None:
        return await self._load_refreshed("function_deps", "key", "lock", key, ttl)

    async def save_lock(self, key: str, data: bytes, ttl: float) -> None:
        await self._upsert("function_deps", "key", "lock", key, data, ttl)
