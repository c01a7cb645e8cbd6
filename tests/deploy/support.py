"""What the deploy tests share: the engine check, the cached image builds, waiting."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.conftest import REPO_ROOT, docker_unavailable_reason

T = TypeVar("T")


def require_engine() -> None:
    """Skip, saying why, where no Docker engine can run the deployments."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def run_script(*argv: str, timeout: float = 900) -> None:
    """Run a repository script (e.g. a cached image build); failing fails the test."""
    result = subprocess.run(
        [str(REPO_ROOT / argv[0]), *argv[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], *, tries: int, pause: float = 1.0) -> T:
    """Call ``probe`` until it returns something (at most ``tries`` times); fail otherwise."""
    last_error: Exception | None = None
    for _ in range(tries):
        try:
            value = probe()
        except Exception as error:  # the service is not up yet: connection refused, 502, ...
            last_error = error
            value = None
        if value is not None:
            return value
        time.sleep(pause)
    pytest.fail(f"gave up waiting for {what} after {tries} tries (last error: {last_error!r})")
