"""What the deploy tests share: the engine check, the cached image builds, waiting, and
the machine-wide lock every deployment test holds while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
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


def run_script(*argv: str, timeout: float = 900, env: dict[str, str] | None = None) -> None:
    """Run a repository script (e.g. a cached image build); failing fails the test.

    ``env`` adds to (or replaces) variables of this process's environment.
    """
    result = subprocess.run(
        [str(REPO_ROOT / argv[0]), *argv[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
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


DEBIAN_PYTHON = Path("/usr/bin/python3")
"""Debian 12's interpreter: what the nodes and images run (3.11.2)."""


def _real_executable(python: str | Path) -> Path | None:
    """Where ``python`` really is (a pyenv shim resolves to its version's binary)."""
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print(sys.executable)"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def controller_pythons() -> list[Path]:
    """Interpreters an operator's controller may run that are not Debian's 3.11.2.

    The ``python3`` first on PATH (pyenv's 3.11.7 on these machines) first, then the
    newest 3.13 that pyenv holds (3.12 behaves alike and is left out to keep the test
    short). Empty where there is none (tests then skip).
    """
    found: list[Path] = []
    debian = _real_executable(DEBIAN_PYTHON)
    for candidate in [
        shutil.which("python3"),
        *(sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.13.*/bin/python3")))[-1:]),
    ]:
        real = _real_executable(candidate) if candidate else None
        if real is not None and real != debian and real not in found:
            found.append(real)
    return found
