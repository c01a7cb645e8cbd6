"""A language whose sandboxes cannot be started is reported with the backend's reason
(the server puts it in /ready), over the real bubblewrap backend."""

from __future__ import annotations

import asyncio
import time

from reflow_microsandbox.pool import SandboxPool
from reflow_microsandbox.sandbox.bubblewrap import BubblewrapBackend

from .conftest import settings


async def test_a_language_that_cannot_start_sandboxes_is_reported_with_the_reason() -> None:
    config = settings(python_min=1, node_min=1)
    backend = BubblewrapBackend(config, node_binary="/nonexistent/node")
    await backend.start()
    pool = SandboxPool(backend, config)
    await pool.start()
    try:
        deadline = time.monotonic() + 30
        while "nodejs" not in pool.start_failures():
            assert time.monotonic() < deadline, "the failing language was not reported"
            await asyncio.sleep(0.05)
        failures = pool.start_failures()
        assert "no nodejs interpreter" in failures["nodejs"]
        assert "python" not in failures
    finally:
        await pool.close()
