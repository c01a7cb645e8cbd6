"""Fixtures for the Docker backend tests: a real engine and the locally built images.

Without an engine (or where scripts/test.sh could not build the images) every test that
asks for ``docker_ready`` is skipped with the reason; none passes without having run.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.sandbox.docker.backend import DockerBackend
from tests.conftest import REPO_ROOT

from .images import require_docker_images

__all__ = ["REPO_ROOT", "containers_labelled", "small_settings"]

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """Skip without an engine; build the runner images (cached) or fail saying why."""
    require_docker_images()


def small_settings(**changes: object) -> SandboxConfig:
    """Sandbox limits small enough for a 2-core test machine."""
    settings = SandboxConfig(
        backend="docker",
        memory_mb=128,
        cpu_limit=0.5,
        max_processes=32,
        tmp_size_mb=8,
        call_timeout=10,
    )
    for key, value in changes.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
def docker_settings(docker_ready: None) -> SandboxConfig:
    return small_settings()


@pytest.fixture
async def docker_backend(docker_settings: SandboxConfig) -> AsyncIterator[DockerBackend]:
    backend = DockerBackend(docker_settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def containers_labelled(label: str) -> list[str]:
    """Ids of every container (running or not) carrying ``label`` (key or key=value)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.split()
