"""Builds a node's :class:`FunctionService` from the config and the server's parts."""

from __future__ import annotations

from ..config import Config
from ..metrics import Metrics
from ..pool import SandboxPool
from ..state.base import StateStore
from .installer import DependencyInstaller
from .metrics import FunctionMetrics
from .service import FunctionService
from .store import open_function_store


def build_function_service(
    config: Config, state: StateStore, pool: SandboxPool, metrics: Metrics
) -> FunctionService:
    """The service over the function store beside ``state``; metrics on ``metrics``'s
    registry. Not started (``await service.start()``)."""
    function_metrics = FunctionMetrics(metrics.registry)
    store = open_function_store(state)
    installer = DependencyInstaller(config.functions, store, function_metrics)
    return FunctionService(config, store, pool, installer, function_metrics)
