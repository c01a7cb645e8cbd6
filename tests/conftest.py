"""Fixtures every test folder shares."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def docker_unavailable_reason() -> str | None:
    """Why the Docker tests cannot run here (written by scripts/test.sh), or None."""
    marker = REPO_ROOT / ".docker-unavailable"
    if marker.exists():
        return marker.read_text().strip() or "docker unavailable"
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        return "the docker CLI is not installed (scripts/test.sh installs docker.io)"
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    if probe.returncode != 0:
        return "no Docker engine answers (scripts/start-dockerd.sh starts one)"
    return None
