"""A rendered deployment for the reliability tests (rendered once per session) and a
factory that starts deployments from it; every process is ended after its test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.provisioning.conftest import AnsibleRunner

from .deployment import Deployment, Rendered

StartDeployment = Callable[..., Awaitable[Deployment]]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """templates/ rendered by ansible/render.yml for two loopback nodes, nginx and Redis."""
    workdir = tmp_path_factory.mktemp("reliability")
    return Rendered(workdir).render(AnsibleRunner(home=workdir / "ansible-home"))


@pytest.fixture
async def start_deployment(rendered: Rendered, tmp_path: Path) -> AsyncIterator[StartDeployment]:
    """``await start_deployment(nodes=("a",), changes={...}, redis=True)``."""
    started: list[Deployment] = []

    async def start(**options: Any) -> Deployment:
        deployment = Deployment(rendered, tmp_path / f"deployment-{len(started)}", **options)
        started.append(deployment)
        return await deployment.start()

    yield start
    for deployment in started:
        await asyncio.to_thread(deployment.stop)
