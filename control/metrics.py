"""Every Prometheus metric of the server, on a registry of its own.

One :class:`Metrics` per server (so two servers in one test process do not clash). It
is also the pool's :class:`~.pool.PoolObserver`. Sandbox counts and memory are read
from the pool's snapshot when Prometheus scrapes, not tracked on the call path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .sandbox.enforced import EnforcedLimit
from .vocabulary import LANGUAGES, Language

if TYPE_CHECKING:
    from .pool import SandboxInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
_RATIO_BUCKETS = (1, 1.5, 2, 3, 5, 10, 20, 50, 100, 500)
_STATES = ("warm", "busy", "idle")


class _PoolCollector(Collector):
    """Sandboxes by language and state, and their memory, from the pool at scrape time."""

    def __init__(self) -> None:
        self.snapshot: Callable[[], list[SandboxInfo]] | None = None

    def collect(self) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "microsandbox_active_sandboxes",
            "Live sandboxes by language and state (warm: ready, busy: in a call, idle: bound)",
            labels=["language", "state"],
        )
        memory = GaugeMetricFamily(
            "microsandbox_memory_usage_bytes",
            "Resident memory of all live sandboxes of a language",
            labels=["language"],
        )
        counts = {(language, state): 0 for language in LANGUAGES for state in _STATES}
        used = dict.fromkeys(LANGUAGES, 0)
        for info in self.snapshot() if self.snapshot is not None else []:
            counts[(info.language, info.state)] += 1
            used[info.language] += info.memory_bytes or 0
        for (language, state), count in counts.items():
            active.add_metric([language, state], count)
        for language, total in used.items():
            memory.add_metric([language], total)
        yield active
        yield memory


class Metrics:
    """The server's metrics; cheap to update from the call path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pool = _PoolCollector()
        self.registry.register(self._pool)
        r = self.registry
        self.execution_duration = Histogram(
            "microsandbox_execution_duration_seconds",
            "Wall time of process calls, from sandbox acquisition to outputs",
            ["language", "outcome"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.compression_ratio = Histogram(
            "microsandbox_compression_ratio",
            "Original size / zstd size of WebSocket frames sent or received compressed",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.rpc_requests = Counter(
            "microsandbox_rpc_requests",
            "JSON-RPC calls answered, by method and code (ok, or the JSON-RPC error code)",
            ["method", "code"],
            registry=r,
        )
        self.ws_connections = Gauge(
            "microsandbox_ws_connections", "Open WebSocket connections", registry=r
        )
        self.acquire_wait = Histogram(
            "microsandbox_pool_acquire_wait_seconds",
            "Time a call waited for a sandbox bound to its actor",
            ["language"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.sandbox_start = Histogram(
            "microsandbox_sandbox_start_seconds",
            "Time to start a sandbox until its runner is ready",
            ["language"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.sandboxes_killed = Counter(
            "microsandbox_sandboxes_killed",
            "Sandboxes thrown away, by language and reason",
            ["language", "reason"],
            registry=r,
        )
        self.state_operations = Counter(
            "microsandbox_state_operations",
            "State requests from scripts, and commits, by operation",
            ["op"],
            registry=r,
        )
        self.stray_frames = Counter(
            "microsandbox_stray_frames",
            "Frames (outputs, logs, state requests, exceptions, raw writes) that a sandbox "
            "sent outside the call they belong to, and that were dropped",
            ["language"],
            registry=r,
        )
        self.state_errors = Counter(
            "microsandbox_state_errors", "State operations that failed", registry=r
        )
        self.log_dropped = Counter(
            "microsandbox_log_dropped_characters",
            "Characters of log text not relayed to clients: over the actor's "
            "sandbox.max_log_chars_per_second_per_actor",
            registry=r,
        )
        self.limits_enforced = Gauge(
            "microsandbox_sandbox_limits_enforced",
            "1 when a sandbox limit is enforced by this mechanism, 0 when nothing enforces it"
            " (mechanism none: the host has no cgroups and sandbox.allow_rlimits_only is set)",
            ["backend", "language", "limit", "mechanism"],
            registry=r,
        )
        # Children cached per label tuple: labels() costs a lock and a dict lookup.
        self._rpc_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[tuple[str, str], Histogram] = {}
        self._state_children: dict[str, Counter] = {}
        self._acquire_children: dict[str, Histogram] = {}

    def attach_pool(self, snapshot: Callable[[], list[SandboxInfo]]) -> None:
        """Read sandbox counts and memory from this snapshot function at scrape time."""
        self._pool.snapshot = snapshot

    def set_enforced_limits(self, backend: str, limits: Iterable[EnforcedLimit]) -> None:
        """Export what enforces each sandbox limit (from ``Backend.enforced_limits()``)."""
        for item in limits:
            self.limits_enforced.labels(backend, item.language, item.limit, item.mechanism).set(
                1 if item.enforced else 0
            )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    # -- call path ------------------------------------------------------------------------

    def rpc_answered(self, method: str, code: str) -> None:
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[(method, code)] = self.rpc_requests.labels(method, code)
        child.inc()

    def execution_finished(self, language: str, outcome: str, seconds: float) -> None:
        child = self._duration_children.get((language, outcome))
        if child is None:
            child = self.execution_duration.labels(language, outcome)
            self._duration_children[(language, outcome)] = child
        child.observe(seconds)

    def state_operation(self, op: str) -> None:
        child = self._state_children.get(op)
        if child is None:
            child = self._state_children[op] = self.state_operations.labels(op)
        child.inc()

    def state_error(self) -> None:
        self.state_errors.inc()

    def compressed(self, original: int, compressed: int) -> None:
        if compressed > 0:
            self.compression_ratio.observe(original / compressed)

    # -- PoolObserver ---------------------------------------------------------------------

    def sandbox_started(self, language: Language, seconds: float) -> None:
        self.sandbox_start.labels(language).observe(seconds)

    def sandbox_killed(self, language: Language, reason: str) -> None:
        self.sandboxes_killed.labels(language, reason).inc()

    def acquire_waited(self, language: Language, seconds: float) -> None:
        child = self._acquire_children.get(language)
        if child is None:
            child = self._acquire_children[language] = self.acquire_wait.labels(language)
        child.observe(seconds)

    def log_characters_dropped(self, count: int) -> None:
        self.log_dropped.inc(count)

    def stray_frames_dropped(self, language: Language, count: int) -> None:
        self.stray_frames.labels(language).inc(count)
