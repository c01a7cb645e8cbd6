"""Fixtures of the deployment tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import deploy_lock


@pytest.fixture
def deploy_locked() -> Iterator[None]:
    """The machine-wide deployment lock (support.DEPLOY_LOCK), held for the whole test.

    Request it before any fixture that starts a stack, a cluster or a swarm: pytest
    tears fixtures down in reverse, so the lock is released after everything is gone.
    """
    with deploy_lock():
        yield
