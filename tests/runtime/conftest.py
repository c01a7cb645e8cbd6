"""Fixtures of the sandbox runtime tests: a started backend of each kind, a host listener.

The ``backend`` fixture is parametrized by backend name, so every test here runs
against each isolation technology behind ``sandbox.base.Backend``; a backend that
cannot run on this machine is skipped with the reason.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend

from .helpers import TEST_SETTINGS


def make_bubblewrap(settings: SandboxConfig) -> Backend:
    return BubblewrapBackend(settings)


def make_docker(settings: SandboxConfig) -> Backend:
    """Skips with docker_unavailable_reason() without an engine; builds the images (cached)."""
    from reflow_microsandbox.sandbox.docker.backend import DockerBackend
    from tests.docker.images import require_docker_images

    require_docker_images()
    return DockerBackend(settings)


BACKEND_FACTORIES: dict[str, Callable[[SandboxConfig], Backend]] = {
    "bubblewrap": make_bubblewrap,
    "docker": make_docker,
}


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Started with TEST_SETTINGS, plus a test's ``@pytest.mark.sandbox_settings(...)``."""
    marker = request.node.get_closest_marker("sandbox_settings")
    settings = SandboxConfig(**{**TEST_SETTINGS, **(marker.kwargs if marker else {})})
    started = BACKEND_FACTORIES[request.param](settings)
    try:
        await started.start()
    except SandboxError as error:
        pytest.skip(f"{request.param} backend unavailable: {error}")
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def host_listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP server on the host's 127.0.0.1 (what a sandbox must not reach)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()
