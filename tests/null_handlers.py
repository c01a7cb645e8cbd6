"""A StateHandler and an EventSink that do nothing, for tests of the call path itself.

The pool and runner-client tests assert scheduling and time limits, not state or pushes:
state requests get the default back and pushes and logs are dropped. (``bench/`` has the
same for benchmarks, as one class, importable there without ``tests`` on the path.)
"""

from __future__ import annotations

from typing import Any


class NoState:
    """Every ``get`` answers its default; writes are dropped."""

    async def get(self, key: str, default: Any = None) -> Any:
        return default

    async def set(self, key: str, value: Any) -> None:
        pass

    async def delete(self, key: str) -> None:
        pass

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        return by


class NoEvents:
    """Pushed outputs and logs are dropped."""

    async def output(self, port: str, data: Any) -> None:
        pass

    async def log(self, level: str, message: str) -> None:
        pass
