"""Actor state: the store interface, its Redis and SQLite implementations, the codec.

The server builds its store with :func:`open_store` and awaits ``store.open()``;
each call that runs an actor gets ``store.transaction(namespace, actor_id)``,
passes it to the sandbox as the ``StateHandler`` and commits it when the call
succeeds (aborts it when the call fails).
"""

from __future__ import annotations

from ..config import Config
from .base import StateStore, StateTransaction
from .redis_store import RedisStore
from .sqlite_store import SqliteStore

__all__ = [
    "RedisStore",
    "SqliteStore",
    "StateStore",
    "StateTransaction",
    "open_store",
]


def open_store(config: Config) -> StateStore:
    """The configured store, not yet opened: Redis when ``redis.url`` is set, else SQLite.

    Values are compressed above ``state.compression_threshold`` bytes, unless
    ``compression.algorithm`` is ``none`` (compressed values already stored are
    still read either way). Raises ``ValueError`` for a malformed ``redis.url``.
    """
    threshold = config.state.compression_threshold
    if config.compression.algorithm == "none":
        threshold = 0
    level = config.compression.level
    max_size = config.server.max_message_size
    if config.redis.url:
        return RedisStore(
            config.redis.url,
            max_connections=config.redis.max_connections,
            socket_timeout=config.redis.socket_timeout,
            compression_threshold=threshold,
            compression_level=level,
            max_value_size=max_size,
            lock_timeout=config.state.lock_timeout,
            lock_ttl=config.state.lock_ttl,
        )
    return SqliteStore(
        config.state.sqlite_path,
        compression_threshold=threshold,
        compression_level=level,
        max_value_size=max_size,
        lock_timeout=config.state.lock_timeout,
    )
