"""Warming: a few sandboxes at a time, and a failed warm-up is tried again.

Found in the Debian 12 VM test: with the production inventory's 10 warm Node sandboxes,
all ten started at once on two emulated cores, all missed the 15 s start timeout, and
the pool never tried again, so /ready stayed 503 for good. The backend here is the real
bubblewrap backend; the wrapper only counts starts and makes the first ones fail (a
start timeout cannot be caused on demand), as said in each test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.pool import WARMING_AT_ONCE, SandboxPool
from reflow_microsandbox.sandbox.base import Backend, Sandbox
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from reflow_microsandbox.sandbox.enforced import EnforcedLimit
from reflow_microsandbox.vocabulary import Language

from .conftest import settings


class CountingBackend(Backend):
    """The real bubblewrap backend; counts concurrent starts; fails the first ``failures``."""

    name = "bubblewrap"

    def __init__(self, inner: BubblewrapBackend, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.starting = 0
        self.most_at_once = 0

    async def start(self) -> None:
        await self.inner.start()

    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> Sandbox:
        self.starting += 1
        self.most_at_once = max(self.most_at_once, self.starting)
        try:
            if self.failures > 0:
                self.failures -= 1
                raise SandboxError("unavailable", "did not start within 15 s (injected)")
            return await self.inner.spawn(language, package_dirs=package_dirs)
        finally:
            self.starting -= 1

    def enforced_limits(self) -> list[EnforcedLimit]:
        return self.inner.enforced_limits()

    async def close(self) -> None:
        await self.inner.close()


async def started_pool(failures: int, **overrides: Any) -> tuple[SandboxPool, CountingBackend]:
    config = settings(**overrides)
    backend = CountingBackend(BubblewrapBackend(config), failures)
    await backend.start()
    pool = SandboxPool(backend, config)
    await pool.start()
    return pool, backend


async def test_failed_warm_ups_are_tried_again_until_the_pool_is_warm() -> None:
    pool, backend = await started_pool(failures=3, python_min=2, python_max=4)
    try:
        assert await pool.wait_warmed(30), "the pool gave up after failed warm-ups"
        assert backend.failures == 0
    finally:
        await pool.close()


async def test_warm_sandboxes_start_a_few_at_a_time() -> None:
    pool, backend = await started_pool(failures=0, python_min=6, python_max=8)
    try:
        assert await pool.wait_warmed(60)
        assert 1 < backend.most_at_once <= WARMING_AT_ONCE
    finally:
        await pool.close()
