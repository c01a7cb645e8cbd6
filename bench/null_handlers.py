"""A StateHandler and EventSink that do nothing: benchmarks measure the pipe, not a store."""

from __future__ import annotations

from typing import Any


class NullHandlers:
    """Answers state requests with the default and drops pushes and logs."""

    async def get(self, key: str, default: Any = None) -> Any:
        return default

    async def set(self, key: str, value: Any) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        return by

    async def output(self, port: str, data: Any) -> None:
        return None

    async def log(self, level: str, message: str) -> None:
        return None
