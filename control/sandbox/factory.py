"""Picks the sandbox backend the config names (imported lazily: Docker's SDK is heavy)."""

from __future__ import annotations

from ..config import Config
from .base import Backend


def create_backend(config: Config) -> Backend:
    """The :class:`Backend` for ``config.sandbox.backend`` (not yet started)."""
    if config.sandbox.backend == "docker":
        from .docker.backend import DockerBackend

        return DockerBackend(config.sandbox)
    from .bubblewrap.backend import BubblewrapBackend

    return BubblewrapBackend(config.sandbox)
