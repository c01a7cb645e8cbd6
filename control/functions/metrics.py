"""Prometheus metrics of the deploy-then-call API, on the server's own registry.

``microsandbox_function_deploys_total{runtime,outcome}`` (``new``: code not seen
before, ``cached``: the same code deployed again, or why it was refused),
``microsandbox_function_undeploys_total{outcome}``, ``microsandbox_functions_deployed``
(cluster-wide, as this node last counted it), ``microsandbox_functions_loaded`` (code
this node holds in memory), ``microsandbox_dependency_installs_total{runtime,outcome}``
(``resolved``, ``replayed`` from another node's lock, ``cached``, ``failed``, ``error``)
and ``microsandbox_dependency_install_duration_seconds{runtime}``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_INSTALL_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class FunctionMetrics:
    """The function API's metrics; every method is cheap and never raises."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deploys = Counter(
            "microsandbox_function_deploys",
            "Deploy requests by runtime and outcome (new, cached, or why refused)",
            ["runtime", "outcome"],
            registry=registry,
        )
        self.undeploys = Counter(
            "microsandbox_function_undeploys",
            "Undeploy requests by outcome (removed, unknown)",
            ["outcome"],
            registry=registry,
        )
        self.deployed = Gauge(
            "microsandbox_functions_deployed",
            "Deployed functions held cluster-wide, as this node last counted them",
            registry=registry,
        )
        self.loaded = Gauge(
            "microsandbox_functions_loaded",
            "Function code this node holds in memory, ready to load into sandboxes",
            registry=registry,
        )
        self.installs = Counter(
            "microsandbox_dependency_installs",
            "Dependency set installs on this node by runtime and outcome",
            ["runtime", "outcome"],
            registry=registry,
        )
        self.install_duration = Histogram(
            "microsandbox_dependency_install_duration_seconds",
            "Wall time of pip / npm runs that installed a dependency set",
            ["runtime"],
            buckets=_INSTALL_BUCKETS,
            registry=registry,
        )

    def deploy(self, runtime: str, outcome: str) -> None:
        self.deploys.labels(runtime, outcome).inc()

    def undeploy(self, outcome: str) -> None:
        self.undeploys.labels(outcome).inc()

    def installed(self, runtime: str, outcome: str, seconds: float | None) -> None:
        self.installs.labels(runtime, outcome).inc()
        if seconds is not None:
            self.install_duration.labels(runtime).observe(seconds)
