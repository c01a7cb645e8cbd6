"""Deployed functions in the state store, so any node of a cluster serves any function.

Three kinds of record, each expiring after ``functions.idle_timeout`` without use
(a deploy, a call, or another deploy of the same code refreshes them):

- *code*: :meth:`FunctionCode.to_bytes` under its SHA-256 digest, written once however
  many deployments share it, and checked against the digest whenever it is read;
- *deployments*: one :class:`FunctionRecord` per deploy, counted against
  ``functions.max_functions`` atomically when created;
- *dependency locks*: what an exact dependency set resolved to on the node that first
  installed it (pinned versions and hashes), so every other node installs the same
  files (see :mod:`.installer`).

Every failure of the underlying store raises :class:`~..errors.StateError` (kind
``state_error``) whose message names the store, as the actor state stores do.
"""

from __future__ import annotations

import abc

from ..state import RedisStore, SqliteStore, StateStore
from .model import FunctionRecord, FunctionState


class FunctionStore(abc.ABC):
    """Where deployed functions live; times are in seconds."""

    name: str

    @abc.abstractmethod
    async def save_code(self, digest: str, data: bytes, ttl: float) -> None:
        """Store (or refresh) the code record ``data`` under ``digest``."""

    @abc.abstractmethod
    async def load_code(self, digest: str, ttl: float) -> bytes | None:
        """The code record under ``digest`` (its expiry refreshed), or None."""

    @abc.abstractmethod
    async def create(self, record: FunctionRecord, ttl: float, limit: int) -> bool:
        """Add a deployment unless ``limit`` live ones exist already (then False)."""

    @abc.abstractmethod
    async def get(self, function_id: str) -> FunctionRecord | None:
        """The deployment, or None when it was never made, was removed or expired."""

    @abc.abstractmethod
    async def touch(self, function_id: str, ttl: float) -> FunctionRecord | None:
        """Count one invocation and refresh the deployment and its code; the record
        after the count, or None when the function is not deployed."""

    @abc.abstractmethod
    async def set_state(self, function_id: str, state: FunctionState, error: str = "") -> bool:
        """Change a deployment's state; False when it no longer exists."""

    @abc.abstractmethod
    async def delete(self, function_id: str) -> FunctionRecord | None:
        """Remove a deployment; the removed record, or None if there was none."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Live deployments, cluster-wide."""

    @abc.abstractmethod
    async def load_lock(self, key: str, ttl: float) -> bytes | None:
        """The lock of dependency set ``key`` (its expiry refreshed), or None."""

    @abc.abstractmethod
    async def save_lock(self, key: str, data: bytes, ttl: float) -> None:
        """Record what dependency set ``key`` resolved to."""


def open_function_store(state: StateStore) -> FunctionStore:
    """The function store that lives beside ``state`` (same Redis, or same SQLite file)."""
    if isinstance(state, RedisStore):
        from .store_redis import RedisFunctionStore

        return RedisFunctionStore(state)
    if isinstance(state, SqliteStore):
        from .store_sqlite import SqliteFunctionStore

        return SqliteFunctionStore(state)
    raise TypeError(f"no function store for {type(state).__name__}")
