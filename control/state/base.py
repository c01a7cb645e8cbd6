"""The state store interface: a store hands out one transaction per actor call.

A call's state reads and writes go through a :class:`StateTransaction`. Writes are
buffered and applied together by :meth:`StateTransaction.commit` when the call
succeeds, or dropped by :meth:`StateTransaction.abort` when it fails.

No lost updates: a transaction takes its actor's lock on its first state access
and holds it until commit or abort, so two calls of one actor that both read and
then write state run one after the other (see :mod:`.transaction`). Optimistic
checks with retry are not an option: a retry would run again a script that has
already pushed outputs.

Errors: every failure of the store (down, timeout, lock wait exceeded, lost lock,
unreadable stored value) raises :class:`~..errors.StateError` (kind ``state_error``) whose
message names the store. A script that passes something that cannot be stored (a
key that is not a string, a value that is not strict JSON or is too large,
incrementing a non-number) gets a ``StateError`` of kind ``script_error``: it is the
script's bug, shown to it like any exception it raised, and the store is fine.
"""

from __future__ import annotations

import abc
from types import TracebackType

from ..vocabulary import JSON


class StateTransaction(abc.ABC):
    """The state requests of one call to one actor; implements ``StateHandler``.

    Use as ``async with store.transaction(ns, actor) as tx:`` (commit on success,
    abort on an exception) or call :meth:`commit` / :meth:`abort` yourself.
    """

    touched: bool = False
    """Whether the call used state at all (a stateless call never takes the lock)."""

    @abc.abstractmethod
    async def get(self, key: str, default: JSON = None) -> JSON:
        """The value under ``key``, this transaction's own buffered writes included."""

    @abc.abstractmethod
    async def set(self, key: str, value: JSON) -> None:
        """Buffer a write of ``value`` (strict JSON) under ``key``."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Buffer the removal of ``key``."""

    @abc.abstractmethod
    async def increment(self, key: str, by: int | float = 1) -> int | float:
        """Add ``by`` to the number under ``key`` (missing counts as 0); the new value."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Apply every buffered write atomically and release the lock."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop the buffered writes and release the lock; idempotent."""

    async def __aenter__(self) -> StateTransaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.abort()


class StateStore(abc.ABC):
    """Where actor state lives (Redis, or an embedded SQLite file)."""

    name: str
    """A short description for messages: ``redis at 127.0.0.1:6379``, ``sqlite /x.db``."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Get ready; never raises because the backend is down (health() says so)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and files; idempotent."""

    @abc.abstractmethod
    async def health(self) -> str | None:
        """None when the store answers, else a reason a person can act on."""

    @abc.abstractmethod
    def transaction(self, namespace: str, actor_id: str) -> StateTransaction:
        """A new transaction for one call of ``namespace:actor_id`` (no I/O yet)."""
