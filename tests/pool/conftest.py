"""A pool over the real bubblewrap backend, with small limits so that tests are quick."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from reflow_microsandbox.config import PoolConfig, PoolLanguageConfig, SandboxConfig
from reflow_microsandbox.pool import SandboxPool
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from reflow_microsandbox.vocabulary import ActorSource, CallContext


def python_actor(name: str, body: str) -> ActorSource:
    source = f"@actor\nasync def process(context):\n{body}\n"
    return ActorSource(name=name, namespace="default", language="python", source=source)


def module_actor(name: str, source: str) -> ActorSource:
    return ActorSource(name=name, namespace="default", language="python", source=source)


def context(actor: ActorSource, **payload: Any) -> CallContext:
    return CallContext(actor_id=actor.name, namespace=actor.namespace, payload=payload)


PoolFactory = Callable[..., "AsyncIterator[SandboxPool]"]


def settings(**overrides: Any) -> SandboxConfig:
    pool_keys = {"acquire_timeout", "max_per_actor", "max_queued_per_actor", "idle_timeout"}
    pool_keys |= {"max_calls", "max_calls_per_second_per_actor"}
    pool_keys |= {"crash_loop_threshold", "crash_loop_backoff", "crash_loop_backoff_max"}
    pool_args = {k: overrides.pop(k) for k in list(overrides) if k in pool_keys}
    python = PoolLanguageConfig(
        min_instances=overrides.pop("python_min", 1), max_instances=overrides.pop("python_max", 4)
    )
    nodejs = PoolLanguageConfig(
        min_instances=overrides.pop("node_min", 0), max_instances=overrides.pop("node_max", 2)
    )
    base: dict[str, Any] = {"memory_mb": 128, "call_timeout": 3.0}
    base.update(overrides)
    return SandboxConfig(pool=PoolConfig(python=python, nodejs=nodejs, **pool_args), **base)


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., Any]]:
    pools: list[SandboxPool] = []

    async def factory(**overrides: Any) -> SandboxPool:
        config = settings(**overrides)
        backend = BubblewrapBackend(config)
        await backend.start()
        pool = SandboxPool(backend, config)
        await pool.start()
        pools.append(pool)
        assert await pool.wait_warmed(10), "the pool did not warm within 10 s"
        return pool

    yield factory
    for pool in pools:
        await pool.close()
