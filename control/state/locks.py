"""In-process per-actor locks: one FIFO ``asyncio.Lock`` per key, dropped when unused.

The first layer of the per-actor state lock. It orders the calls of one actor
inside this process, so at most one of them at a time competes for the
cross-process lock (Redis key or file lock), and keeps that competition cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyedLocks:
    """A lock per key, created on demand and forgotten when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}

    async def acquire(self, key: Hashable, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for ``key``; raises ``TimeoutError``."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await entry.lock.acquire()
        except BaseException:
            self._forget(key, entry)
            raise

    def release(self, key: Hashable) -> None:
        """Release ``key`` (which this task acquired)."""
        entry = self._entries[key]
        entry.lock.release()
        self._forget(key, entry)

    def __len__(self) -> int:
        return len(self._entries)

    def _forget(self, key: Hashable, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]
