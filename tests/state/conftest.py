"""Stores against a real redis-server (one per test) and a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reflow_microsandbox.state import RedisStore, SqliteStore, StateStore
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, lock_timeout=10.0)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "state.db"), lock_timeout=10.0)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=["redis", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    """Each semantic test runs against both stores."""
    if request.param == "redis":
        server = RedisServer().start()
        request.addfinalizer(server.close)
        opened: StateStore = RedisStore(server.url, lock_timeout=10.0)
    else:
        opened = SqliteStore(str(tmp_path / "state.db"), lock_timeout=10.0)
    await opened.open()
    yield opened
    await opened.close()
