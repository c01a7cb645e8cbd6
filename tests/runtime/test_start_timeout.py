"""``sandbox.start_timeout``: a sandbox whose runner is not ready in time is thrown away.

Both backends, for real: the runner cannot report ready within a millisecond (bwrap or
a container and an interpreter take tens of milliseconds at best), so the start fails
as ``unavailable`` naming the limit, and the next start, with the limit back, serves.
"""

from __future__ import annotations

import pytest

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend

from .helpers import assert_serves


async def test_a_runner_not_ready_in_time_is_unavailable_naming_the_limit(
    backend: Backend,
) -> None:
    configured = backend.settings  # type: ignore[attr-defined]
    backend.settings = configured.model_copy(update={"start_timeout": 0.001})  # type: ignore[attr-defined]
    try:
        with pytest.raises(SandboxError) as caught:
            await backend.spawn("python")
    finally:
        backend.settings = configured  # type: ignore[attr-defined]
    assert caught.value.kind == "unavailable"
    assert "did not start within 0.001 s" in caught.value.message
    await assert_serves(backend)
