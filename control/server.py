"""The composition root: config → registry → state store → backend → pool → transports.

:class:`Server` starts everything in that order and stops it in reverse, draining
first: new connections and calls are refused, running calls get up to
``server.drain_timeout`` to finish, then every sandbox is killed and the store closed.
WebSocket connections are drained one by one, each closed as soon as its client waits for
nothing (transports/ws.py), so Reflow reconnects through the balancer to another node.
Use it as ``async with Server(config) as server:``, or ``start()`` / ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType

from .config import Config
from .dispatch import Dispatcher
from .functions.http_api import FunctionRoutes
from .functions.setup import build_function_service
from .logbudget import LogBudget
from .methods import Api, CallScope
from .metrics import Metrics
from .pool import SandboxPool
from .registry import ActorRegistry
from .sandbox.base import Backend
from .sandbox.enforced import describe
from .sandbox.factory import create_backend
from .state import open_store
from .state.base import StateStore
from .transports.auth import TokenAuth
from .transports.http import HttpTransport, MetricsEndpoint
from .transports.ws import WsTransport
from .vocabulary import LANGUAGES

log = logging.getLogger(__name__)


class Server:
    """One control plane: WebSocket, HTTP and metrics endpoints over one pool and store.

    ``ephemeral_ports`` binds every enabled port to a free one (for tests); the bound
    ports are in :attr:`ws_port`, :attr:`http_port` and :attr:`metrics_port`.
    """

    def __init__(
        self,
        config: Config,
        *,
        backend: Backend | None = None,
        ephemeral_ports: bool = False,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = ActorRegistry(
            config.scripts.folders, allow_inline=config.scripts.allow_inline
        )
        self.store: StateStore = open_store(config)
        self.backend = backend if backend is not None else create_backend(config)
        self.pool = SandboxPool(self.backend, config.sandbox, self.metrics)
        self.metrics.attach_pool(self.pool.snapshot)
        self.dispatcher: Dispatcher[CallScope] = Dispatcher(self.metrics.rpc_answered)
        log_rate = config.sandbox.max_log_chars_per_second_per_actor
        log_budget = LogBudget(log_rate, log_rate) if log_rate > 0 else None
        Api(self.registry, self.store, self.pool, self.metrics, log_budget).register(
            self.dispatcher
        )
        auth = TokenAuth(config.auth.tokens)
        self.functions = build_function_service(config, self.store, self.pool, self.metrics)
        self._ws = WsTransport(
            config, self.dispatcher, auth, self.metrics, functions=self.functions.binding
        )
        self._http = HttpTransport(
            self.dispatcher,
            auth,
            self.not_ready_reasons,
            max_body=config.server.max_message_size,
            shutdown_timeout=config.server.drain_timeout,
            routes=FunctionRoutes(self.functions, auth, config.functions.max_code_bytes).routes(),
        )
        self._metrics_endpoint = (
            MetricsEndpoint(self.metrics) if config.server.metrics_port else None
        )
        self._ephemeral = ephemeral_ports
        self._started = False
        self._stopped = False

    @property
    def ws_port(self) -> int:
        return self._ws.port

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def metrics_port(self) -> int:
        """0 when the metrics endpoint is off."""
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else 0

    async def start(self) -> None:
        """Start every part; returns once the ports listen (the pool warms in the background)."""
        self._started = True
        server = self.config.server
        self.registry.discover()
        await self.store.open()
        await self.backend.start()
        limits = self.backend.enforced_limits()
        self.metrics.set_enforced_limits(self.backend.name, limits)
        log.info("sandbox limits in force (%s backend): %s", self.backend.name, describe(limits))
        unenforced = [f"{item.language} {item.limit}" for item in limits if not item.enforced]
        if unenforced:
            log.warning("NOT enforced on this host: %s", ", ".join(unenforced))
        await self.pool.start()
        await self.functions.start()
        host = server.host
        await self._http.start(host, 0 if self._ephemeral else server.http_port)
        await self._ws.start(host, 0 if self._ephemeral else server.ws_port)
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.start(host, 0 if self._ephemeral else server.metrics_port)
        log.info(
            "serving %d actors: ws://%s:%d http://%s:%d metrics %s",
            len(self.registry.names()),
            host,
            self.ws_port,
            host,
            self.http_port,
            f"http://{host}:{self.metrics_port}/metrics" if self.metrics_port else "off",
        )

    async def not_ready_reasons(self) -> list[str]:
        """Why the server should not get traffic yet (empty when ready)."""
        reasons: list[str] = []
        if not self.pool.warmed:
            wanted = ", ".join(
                f"{language} {self.config.sandbox.pool.for_language(language).min_instances}"
                for language in LANGUAGES
            )
            reasons.append(f"the sandbox pool has not warmed yet (min_instances: {wanted})")
        for language, failure in self.pool.start_failures().items():
            reasons.append(f"{language} sandboxes cannot be started: {failure}")
        problem = await self.store.health()
        if problem is not None:
            reasons.append(f"state store: {problem}")
        return reasons

    async def stop(self) -> None:
        """Drain, then close everything; idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        timeout = self.config.server.drain_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        self._ws.stop_accepting()
        self._http.stop_accepting()
        self.functions.stop_accepting()
        # HTTP stays up while calls drain: /ready says 503, a deploy or an HTTP call is
        # refused with a JSON answer (503: nothing was done, a balancer retries elsewhere).
        # WebSocket connections are closed one by one as their clients wait for nothing.
        connections_closed = await self._ws.drain(timeout)
        if not connections_closed:
            log.warning(
                "WebSocket connections still open after the %.1f s drain timeout: closing them",
                timeout,
            )
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        drained = await self.dispatcher.wait_idle(remaining)
        await self._http.close()
        if not drained:
            log.warning(
                "%d calls still running after the %.1f s drain timeout: killing their sandboxes",
                self.dispatcher.in_flight,
                timeout,
            )
        await self.functions.close()
        await self.pool.close()  # kills every sandbox; calls still running fail
        await self._ws.close()
        await self.store.close()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.close()

    async def __aenter__(self) -> Server:
        try:
            await self.start()
        except BaseException:
            await self._abandon_start()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _abandon_start(self) -> None:
        """Undo a start that failed half-way (ports may already listen)."""
        self._started = True
        try:
            await self.stop()
        except Exception:
            log.exception("cleaning up after a failed start")

    async def serve_until_signal(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with self:
            await stop.wait()
            log.info("signal received: draining (up to %.1f s)", self.config.server.drain_timeout)
