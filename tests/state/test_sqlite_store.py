"""The embedded SQLite store: file format, persistence, processes, an unusable path."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from reflow_microsandbox.config import parse_config
from reflow_microsandbox.errors import StateError
from reflow_microsandbox.state import SqliteStore, open_store
from tests.state.processes import run_counter_processes


def rows(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as conn:
        return {key: bytes(value) for key, value in conn.execute("SELECT key, value FROM state")}


async def test_values_are_stored_as_json_or_zstd_in_one_wal_table(
    tmp_path: Path, sqlite_store: SqliteStore
) -> None:
    async with sqlite_store.transaction("a.b", "x") as tx:
        await tx.set("small", [1, "two"])
        await tx.set("big", {"blob": "z" * 10_000})
        await tx.increment("n", 7)
    stored = rows(tmp_path / "state.db")
    assert stored["a.b:x:small"] == b'[1,"two"]'
    assert stored["a.b:x:n"] == b"7"
    assert stored["a.b:x:big"].startswith(b"\x28\xb5\x2f\xfd")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_state_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteStore(path)
    async with first.transaction("default", "test_actor") as tx:
        await tx.set("counter", 41)
    await first.close()
    second = SqliteStore(path)
    try:
        async with second.transaction("default", "test_actor") as tx:
            assert await tx.increment("counter") == 42
    finally:
        await second.close()


async def test_two_processes_on_one_file_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await asyncio.to_thread(run_counter_processes, "sqlite", str(path), 2, 100)
    assert rows(path)["default:test_actor:counter"] == b"200"


async def test_an_unusable_path_is_reported_not_raised_at_open(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "missing-folder" / "state.db"))
    try:
        await store.open()
        problem = await store.health()
        assert problem is not None and "missing-folder" in problem
        stateless = store.transaction("default", "a")
        await stateless.commit()  # a call without state still works
        tx = store.transaction("default", "a")
        with pytest.raises(StateError) as caught:
            await tx.get("k")
        await tx.abort()
        assert caught.value.kind == "state_error"
        assert "sqlite" in caught.value.message and "missing-folder" in caught.value.message
        # Once the folder exists, the same store works without a restart.
        (tmp_path / "missing-folder").mkdir()
        assert await store.health() is None
        async with store.transaction("default", "a") as tx:
            await tx.set("k", "v")
    finally:
        await store.close()


async def test_open_store_without_redis_uses_the_configured_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "configured.db"
    config = parse_config({"state": {"sqlite_path": str(path), "compression_threshold": 0}})
    store = open_store(config)
    assert isinstance(store, SqliteStore)
    await store.open()
    try:
        async with store.transaction("default", "a") as tx:
            await tx.set("big", "q" * 5000)
    finally:
        await store.close()
    assert rows(path)["default:a:big"] == b'"' + b"q" * 5000 + b'"'
