"""Whether the Docker tests can run here, and the runner images they need (built once).

Shared by tests/docker and by tests/runtime's ``docker`` backend parameter: without an
engine the caller skips with the reason; with one, scripts/build-images.sh (cached) must
succeed, or the test fails saying why.
"""

from __future__ import annotations

import functools
import subprocess

import pytest

from tests.conftest import REPO_ROOT, docker_unavailable_reason


@functools.cache
def _unavailable() -> str | None:
    return docker_unavailable_reason()


@functools.cache
def _build() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )


def require_docker_images() -> None:
    """Skip (with the reason) without an engine; otherwise build the images or fail."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"docker tests skipped: {reason}")
    build = _build()
    if build.returncode != 0:
        pytest.fail(f"scripts/build-images.sh failed:\n{build.stdout}\n{build.stderr}")
