"""The docker-compose local stack, brought up for real with Debian's docker-compose.

Redis, the control plane (Docker backend through the engine socket), nginx,
Prometheus and the Redis, nginx and node exporters, all built from the repository's
Dockerfiles on the local base image. The
stack runs under a project name of its own with published ports on free loopback ports,
and is always torn down (volumes and orphans too), failure or not, together with any
sandbox container its replicas started.
"""

from __future__ import annotations

import filecmp
import json
import os
import secrets
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitoring import dashboard
from tests.conftest import REPO_ROOT
from tests.monitoring.exposition import substitute

from . import dynasb_deploy
from .reflow_client import call
from .support import free_port, require_engine, run_script, wait_for

pytestmark = pytest.mark.deploy

RENDERED = ("redis.conf", "microsandbox.yaml", "nginx-loadbalancer.conf", "prometheus.yml",
            "rules/microsandbox-alerts.yml")
OWNER_HOST_LABEL = "io.reflow.microsandbox.owner-host"
# The exporter services and the Prometheus job that scrapes each (docs/monitoring.md).
EXPORTERS = {"redis-exporter": "redis", "nginx-exporter": "nginx", "node-exporter": "node"}


@dataclass
class Stack:
    """A running compose project and how to reach it from the host."""

    project: str
    env: dict[str, str]
    lb_port: int
    prometheus_port: int

    def compose(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["docker-compose", "-p", self.project, *args],
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def replica_hosts(self) -> list[str]:
        """The replicas' hostnames (short container ids): their sandboxes' owner label."""
        return [cid[:12] for cid in self.compose("ps", "-q", "microsandbox").split()]

    def get(self, port: int, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status: int = response.status
            return status, response.read()


def _remove_sandboxes_of(hosts: list[str]) -> None:
    """Remove sandbox containers the replicas may have left (they normally remove them)."""
    for host in hosts:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={OWNER_HOST_LABEL}={host}"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)


@pytest.fixture
def stack(deploy_locked: None, tmp_path: Path) -> Iterator[Stack]:
    require_engine()
    run_script("scripts/build-images.sh")
    run_script("scripts/build-control-plane-image.sh")
    env = dict(os.environ)
    env.update(
        REDIS_PASSWORD=secrets.token_hex(16),
        MICROSANDBOX_LB_PORT=str(free_port()),
        MICROSANDBOX_HTTP_PORT=str(free_port()),
        MICROSANDBOX_WS_PORT=str(free_port()),
        PROMETHEUS_PORT=str(free_port()),
        # Deployed functions' dependency cache (a host path the engine binds): a temp dir.
        MICROSANDBOX_DEPENDENCY_CACHE=str(tmp_path / "function-dependencies"),
    )
    stack = Stack(
        project=f"msbxtest{secrets.token_hex(4)}",
        env=env,
        lb_port=int(env["MICROSANDBOX_LB_PORT"]),
        prometheus_port=int(env["PROMETHEUS_PORT"]),
    )
    hosts: list[str] = []
    try:
        # The service and exporter images are plain Debian packages: the engine's cache makes
        # this quick after the first time.
        stack.compose("build", "redis", "nginx", "prometheus", *EXPORTERS, timeout=900)
        stack.compose("up", "-d", "--no-build")
        yield stack
    finally:
        try:
            hosts = stack.replica_hosts()
        except BaseException:  # the project may not have come up at all
            hosts = []
        subprocess.run(
            ["docker-compose", "-p", stack.project, "down", "-v", "--remove-orphans", "-t", "10"],
            cwd=REPO_ROOT, env=env, capture_output=True, timeout=300,
        )
        _remove_sandboxes_of(hosts)


def _ready_through_balancer(stack: Stack) -> bool | None:
    health = stack.get(stack.lb_port, "/health")
    ready = stack.get(stack.lb_port, "/ready")
    return True if health == (200, b"ok\n") and ready[0] == 200 else None


def _microsandbox_targets(stack: Stack) -> list[dict[str, Any]]:
    _, body = stack.get(stack.prometheus_port, "/api/v1/targets")
    targets: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
    return [t for t in targets if t["labels"]["job"] == "microsandbox"]


def _all_up(stack: Stack, count: int) -> list[dict[str, Any]] | None:
    targets = _microsandbox_targets(stack)
    healthy = [t for t in targets if t["health"] == "up"]
    return targets if len(targets) == count and len(healthy) == count else None


def _exporters_up(stack: Stack) -> dict[str, str] | None:
    """Each exporter job's one target and its health, once all of them are up."""
    _, body = stack.get(stack.prometheus_port, "/api/v1/targets")
    targets = json.loads(body)["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets
              if t["labels"]["job"] in EXPORTERS.values()}
    return health if health == dict.fromkeys(EXPORTERS.values(), "up") else None


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    _, body = stack.get(stack.prometheus_port, f"/api/v1/query?{query}")
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def _dashboard_queries_answered(stack: Stack) -> dict[str, bool]:
    """Panel title -> whether its queries returned any series (each must not error)."""
    panels = json.loads(dashboard.OUTPUT.read_text())["panels"]
    answered: dict[str, bool] = {}
    for panel in (p for p in panels if p["type"] != "row"):
        results = [_query(stack, substitute(target["expr"])) for target in panel["targets"]]
        answered[panel["title"]] = any(results)
    return answered


def _run_actor(stack: Stack) -> None:
    url = f"ws://127.0.0.1:{stack.lb_port}/?actor=test_actor"
    (result,) = call(url, "test_actor", {"input": 1})
    assert result.error is None
    assert result.id_echoed
    assert result.outputs is not None and result.outputs["status"] == "success"
    pushed = [p for p in result.pushes if p["port"] == "test"]
    assert len(pushed) == 1 and pushed[0]["data"] == "x" * 10000
    assert set(pushed[0]) >= {"actor_id", "port", "data", "timestamp"}


@pytest.mark.timeout(1200)
def test_compose_stack_runs_an_actor_through_nginx_and_prometheus_scrapes_every_replica(
    stack: Stack,
) -> None:
    wait_for("/health and /ready through nginx", lambda: _ready_through_balancer(stack), tries=60)
    _run_actor(stack)
    _run_deployed_function(stack)

    stack.compose("up", "-d", "--no-build", "--scale", "microsandbox=3")
    assert len(stack.replica_hosts()) == 3
    targets = wait_for("Prometheus to scrape 3 replicas", lambda: _all_up(stack, 3), tries=60)
    assert len({t["labels"]["instance"] for t in targets}) == 3

    # nginx resolves the service name when it (re)loads: after a reload it still serves.
    stack.compose("kill", "-s", "HUP", "nginx")
    wait_for("/ready through nginx after the reload", lambda: _ready_through_balancer(stack),
             tries=30)
    _run_actor(stack)

    # The exporters are scraped, and read what they export: Redis through its password,
    # nginx through stub_status, the host through its /proc.
    wait_for("Prometheus to scrape the Redis, nginx and node exporters",
             lambda: _exporters_up(stack), tries=90)
    for expr in ("redis_up", "nginx_up", "node_memory_MemTotal_bytes"):
        samples = wait_for(f"{expr} in Prometheus", lambda e=expr: _query(stack, e) or None,
                           tries=30)
        assert float(samples[0]["value"][1]) > 0, (expr, samples)

    # Every query of the Grafana dashboard runs on this Prometheus, and the panels over
    # series that always exist show data (the others need events: kills, errors, OOM).
    always = ("Pool occupancy per language", "Open WebSocket connections",
              "Redis memory against maxmemory", "Balancer connections",
              "Upstream health: sandbox nodes answering", "CPU busy", "Memory available")

    def panels_with_data() -> dict[str, bool] | None:
        answered = _dashboard_queries_answered(stack)
        return answered if all(answered[title] for title in always) else None

    wait_for("the dashboard's panels over ever-present series to show data",
             panels_with_data, tries=30, pause=2)


def _run_deployed_function(stack: Stack) -> None:
    """Reflow's deploy-then-call path through nginx: deploy, poll, call, undeploy."""
    api = f"http://127.0.0.1:{stack.lb_port}"
    function_id = dynasb_deploy.deploy(api, "doubler", "python", dynasb_deploy.SAMPLE["python"])
    (result,) = call(f"ws://127.0.0.1:{stack.lb_port}/ws/{function_id}", "doubler", {"input": 4})
    assert result.error is None and result.outputs == {"output": 8, "calls": 1}
    assert [p["data"] for p in result.pushes] == ["doubling"]
    _, status = dynasb_deploy.request(api, "GET", f"/api/v1/functions/{function_id}")
    assert status["invocationCount"] == 1
    dynasb_deploy.request(api, "POST", f"/api/v1/functions/{function_id}/undeploy")
    (gone,) = call(f"ws://127.0.0.1:{stack.lb_port}/ws/{function_id}", "doubler")
    assert gone.error is not None and gone.error["data"]["kind"] == "not_found"


def test_committed_compose_configs_are_what_the_templates_render(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "compose" / "render.sh"), str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stale = [
        name for name in RENDERED
        if not filecmp.cmp(tmp_path / name, REPO_ROOT / "compose" / name, shallow=False)
    ]
    assert stale == [], f"compose/{stale} differ from templates/: run compose/render.sh"
