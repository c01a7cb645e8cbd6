"""What the deploy tests share: the engine check, the cached image builds, waiting, and
the machine-wide lock every deployment test holds while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import REPO_ROOT, docker_unavailable_reason

T = TypeVar("T")

DEPLOY_LOCK = Path("/tmp/msb-deploy.lock")
"""Serializes everything that uses the shared Docker engine's fixed resources on this
machine: compose stacks, molecule clusters, swarm init/leave, fixed host ports. Scripts
and people take it with ``flock /tmp/msb-deploy.lock COMMAND``; the tests take it too."""


def _inherited_lock_fd(path: Path) -> int | None:
    """An open descriptor on ``path`` this process inherited (from ``flock FILE cmd``)."""
    fd_dir = Path("/proc/self/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry) == str(path):
                return int(entry.name)
    return None


@contextlib.contextmanager
def deploy_lock(path: Path = DEPLOY_LOCK) -> Iterator[None]:
    """Hold the machine-wide deployment lock (``flock(2)``, exclusive) for the block.

    Under ``flock /tmp/msb-deploy.lock pytest ...`` this process inherits the descriptor
    that already holds the lock: taking it again on that same open file is immediate
    (a fresh ``open`` would wait for our own parent forever), and it is left to the
    parent to release. Otherwise the lock is taken on a new descriptor, waiting as long
    as another run holds it (pytest's timeout bounds the wait), and released on exit.
    """
    inherited = _inherited_lock_fd(path)
    if inherited is not None:
        fcntl.flock(inherited, fcntl.LOCK_EX)
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
