"""docker-stack.yml on a real single-node Docker Swarm, created by the test and left after.

The engine joins a swarm of its own (``docker swarm init`` on loopback), the stack is
deployed with the guide's command shape, and everything a user sees is checked through
the published balancer and Prometheus ports (free loopback ports): Reflow-style calls,
``docker service scale reflow_microsandbox=4`` with every replica answering, a rolling
update under a steady stream of calls with every call answered, Redis data kept on its
volume across a restart, and ``docker stack rm`` leaving nothing behind. The swarm is
left (``docker swarm leave --force``) and everything it made removed, failure or not;
the whole test holds the machine-wide deployment lock, so the compose and molecule
tests never share the engine with a swarm.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import REPO_ROOT

from .reflow_client import ReflowConnection, call
from .support import free_port, require_engine, run_script, wait_for

pytestmark = pytest.mark.deploy

STACK = "reflow"  # the guide's name: the service is reflow_microsandbox
SERVICE = f"{STACK}_microsandbox"
NODE_LABEL = "io.reflow.microsandbox.test-swarm"
OWNER_HOST_LABEL = "io.reflow.microsandbox.owner-host"
# Every image the stack runs, by the variable docker-stack.yml reads it from. The test
# deploys its own tags of them: image names are global on the engine, and another run's
# build of :latest must not change what this swarm runs halfway through.
TEST_TAG = "swarm-test"
IMAGES = {
    "CONTROL_PLANE_IMAGE": "reflow-microsandbox/control-plane",
    "REDIS_IMAGE": "reflow-microsandbox/compose-redis",
    "NGINX_IMAGE": "reflow-microsandbox/compose-nginx",
    "PROMETHEUS_IMAGE": "reflow-microsandbox/compose-prometheus",
    "REDIS_EXPORTER_IMAGE": "reflow-microsandbox/compose-redis-exporter",
    "NGINX_EXPORTER_IMAGE": "reflow-microsandbox/compose-nginx-exporter",
    "NODE_EXPORTER_IMAGE": "reflow-microsandbox/compose-node-exporter",
    "PYTHON_RUNNER_IMAGE": "reflow-microsandbox/python-runner",
    "NODE_RUNNER_IMAGE": "reflow-microsandbox/node-runner",
}
IMAGE = f"{IMAGES['CONTROL_PLANE_IMAGE']}:{TEST_TAG}"
ROLLED_IMAGE = f"{IMAGES['CONTROL_PLANE_IMAGE']}:{TEST_TAG}-rolled"
SECRETS = ("microsandbox_redis_password", "microsandbox_auth_tokens")
_PROCESS_OK = re.compile(
    r'^microsandbox_rpc_requests_total\{code="ok",method="process"\} (\S+)$', re.MULTILINE
)


def docker(*args: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            input=stdin)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass
class Swarm:
    """The test's swarm and how to reach the stack from the host."""

    lb_port: int
    prometheus_port: int
    token: str
    dependency_cache: str
    replica_hosts: set[str] = field(default_factory=set)

    def url(self, actor: str | None = None) -> str:
        query = f"actor={actor}&token={self.token}" if actor else f"token={self.token}"
        return f"ws://127.0.0.1:{self.lb_port}/?{query}"

    def deploy(self) -> None:
        env = {"MICROSANDBOX_LB_PORT": str(self.lb_port),
               "PROMETHEUS_PORT": str(self.prometheus_port), "MICROSANDBOX_REPLICAS": "2",
               "MICROSANDBOX_DEPENDENCY_CACHE": self.dependency_cache,
               **{var: f"{repo}:{TEST_TAG}" for var, repo in IMAGES.items()}}
        result = subprocess.run(
            ["docker", "stack", "deploy", "-c", "docker-stack.yml", STACK],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, **env},
        )
        if result.returncode != 0:
            pytest.fail(f"docker stack deploy failed:\n{result.stdout}\n{result.stderr}")

    def replicas(self) -> list[str]:
        """Container ids of the running control-plane replicas (remembered for cleanup)."""
        ids = docker("ps", "-q", "--no-trunc", "--filter",
                     f"label=com.docker.swarm.service.name={SERVICE}").split()
        self.replica_hosts.update(cid[:12] for cid in ids)
        return ids


def _processed(container: str) -> float:
    """The replica's own count of successful ``process`` calls (its metrics endpoint)."""
    text = docker("exec", container, "python3", "-c",
                  "import urllib.request as u; "
                  "print(u.urlopen('http://127.0.0.1:9090/metrics', timeout=5).read().decode())")
    match = _PROCESS_OK.search(text)
    return float(match[1]) if match else 0.0


def _converged(service: str, want: int) -> bool | None:
    ps = docker("service", "ps", service, "--filter", "desired-state=running",
                "--format", "{{.CurrentState}}").split("\n")
    running = [line for line in ps if line.startswith("Running")]
    return True if len(running) == want else None


def _healthy_replicas(swarm: Swarm, want: int) -> list[str] | None:
    ids = swarm.replicas()
    healthy = [c for c in ids
               if docker("inspect", "-f", "{{.State.Health.Status}}", c).strip() == "healthy"]
    return healthy if len(ids) == want and len(healthy) == want else None


def _ready_through_balancer(swarm: Swarm) -> bool | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{swarm.lb_port}/ready", timeout=5) as reply:
        return True if reply.status == 200 else None


def _targets_up(swarm: Swarm, want: int) -> list[str] | None:
    url = f"http://127.0.0.1:{swarm.prometheus_port}/api/v1/targets"
    with urllib.request.urlopen(url, timeout=5) as reply:
        targets = json.loads(reply.read())["data"]["activeTargets"]
    replicas = [t for t in targets if t["labels"]["job"] == "microsandbox"]
    up = [t["labels"]["instance"] for t in replicas if t["health"] == "up"]
    return up if len(up) == want and len(replicas) == want else None


def _exporters_up(swarm: Swarm) -> list[str] | None:
    url = f"http://127.0.0.1:{swarm.prometheus_port}/api/v1/targets"
    with urllib.request.urlopen(url, timeout=5) as reply:
        targets = json.loads(reply.read())["data"]["activeTargets"]
    others = [t for t in targets if t["labels"]["job"] != "microsandbox"]
    if not others or any(t["health"] != "up" for t in others):
        return None
    return sorted({t["labels"]["job"] for t in others})


def _update_completed() -> bool | None:
    """True once the service's update completed; fails the test if it rolled back."""
    status = json.loads(docker("service", "inspect", SERVICE, "--format",
                               "{{json .UpdateStatus}}"))
    state = status.get("State", "")
    if state.startswith("rollback") or "paused" in state:
        tasks = docker("service", "ps", SERVICE, "--no-trunc", "--format",
                       "{{.Name}} {{.Image}} {{.CurrentState}} {{.Error}}")
        pytest.fail(f"the rolling update did not complete: {status}\n{tasks}")
    return True if state == "completed" else None


def _leave_swarm_we_made(had_gwbridge: bool) -> None:
    docker("swarm", "leave", "--force", check=False)
    if had_gwbridge:
        return
    # The bridge swarm init made. Docker 20.10 sometimes keeps a stale endpoint on it after
    # the leave ("has active endpoints", with no container attached): then it stays, and
    # the next swarm init reuses it; only a dockerd restart clears it (docs/swarm.md).
    for _ in range(10):
        if not docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").strip():
            return
        docker("network", "rm", "docker_gwbridge", check=False)
        time.sleep(0.5)


@pytest.fixture
def swarm(deploy_locked: None, tmp_path: Path) -> Iterator[Swarm]:
    require_engine()
    run_script("scripts/build-images.sh")
    run_script("scripts/build-control-plane-image.sh")
    run_script("scripts/build-service-images.sh")
    for repo in IMAGES.values():
        docker("tag", f"{repo}:latest", f"{repo}:{TEST_TAG}")
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if state == "active":
        labels = docker("node", "inspect", "self", "--format", "{{json .Spec.Labels}}",
                        check=False)
        if NODE_LABEL not in labels:
            pytest.skip("this engine is part of a swarm the test did not create: left alone")
        _leave_swarm_we_made(had_gwbridge=False)  # a crashed run's swarm: ours to remove
    had_gwbridge = bool(docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").strip())
    docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
    cache = tmp_path / "function-dependencies"
    cache.mkdir()
    swarm = Swarm(lb_port=free_port(), prometheus_port=free_port(), token=secrets.token_hex(16),
                  dependency_cache=str(cache))
    try:
        node = docker("info", "--format", "{{.Swarm.NodeID}}").strip()
        docker("node", "update", "--label-add", f"{NODE_LABEL}=1", node)
        docker("secret", "create", SECRETS[0], "-", stdin=secrets.token_hex(24))
        docker("secret", "create", SECRETS[1], "-", stdin=swarm.token)
        yield swarm
    finally:
        docker("stack", "rm", STACK, check=False)
        for _ in range(120):
            if not docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}",
                          check=False).strip():
                break
            time.sleep(1)
        _leave_swarm_we_made(had_gwbridge)
        leftovers = [c for host in swarm.replica_hosts for c in docker(
            "ps", "-aq", "--filter", f"label={OWNER_HOST_LABEL}={host}", check=False).split()]
        if leftovers:
            docker("rm", "-f", *leftovers, check=False)
        docker("volume", "rm", f"{STACK}_redis-data", f"{STACK}_prometheus-data", check=False)
        docker("image", "rm", ROLLED_IMAGE, *(f"{repo}:{TEST_TAG}" for repo in IMAGES.values()),
               check=False)


def _steady_stream(swarm: Swarm, stop: threading.Event, actor: str | None,
                   results: list[tuple[str, Any]]) -> None:
    """One Reflow actor instance calling at a steady pace until ``stop``; every outcome
    (answer, error, lost) is appended to ``results``."""
    conn = ReflowConnection(swarm.url(actor), timeout=30)
    try:
        while not stop.is_set():
            try:
                result = conn.call("test_actor", {"input": 1})
            except (ConnectionClosed, TimeoutError, OSError, InvalidStatus) as error:
                results.append(("lost", repr(error)))
                conn.close()
                continue
            if result.error is not None or not result.outputs:
                results.append(("error", result.error))
            else:
                results.append(("ok", result.outputs["counter"]))
            # An actor loop's pause between a reply and its next input (Reflow's flow).
            stop.wait(0.1)
    finally:
        conn.close()


@pytest.mark.timeout(1200)
def test_swarm_stack_deploys_scales_rolls_without_losing_a_call_and_leaves_nothing(
    swarm: Swarm,
) -> None:
    start = time.monotonic()

    def phase(name: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {name}", flush=True)

    began = time.monotonic()
    swarm.deploy()
    for service, want in (("redis", 1), ("microsandbox", 2), ("nginx", 1), ("prometheus", 1),
                          ("redis-exporter", 1), ("nginx-exporter", 1), ("node-exporter", 1)):
        wait_for(f"{service} to run", functools.partial(_converged, f"{STACK}_{service}", want),
                 tries=180)
    wait_for("2 healthy replicas", lambda: _healthy_replicas(swarm, 2), tries=180)
    wait_for("/ready through the balancer", lambda: _ready_through_balancer(swarm), tries=60)
    deployed = time.monotonic() - began

    phase("deployed")
    # --- Reflow through the balancer: outputs, the 10 kB push, auth -------------------
    (result,) = call(swarm.url("test_actor"), "test_actor", {"input": 1})
    assert result.error is None and result.id_echoed
    assert result.outputs is not None and result.outputs["status"] == "success"
    assert [p["data"] for p in result.pushes if p["port"] == "test"] == ["x" * 10000]
    with pytest.raises(InvalidStatus) as refused:
        call(f"ws://127.0.0.1:{swarm.lb_port}/?actor=test_actor", "test_actor")
    assert refused.value.response.status_code == 401

    phase("called")
    # --- The guide's scale command: 2 -> 4, every replica answers ----------------------
    began = time.monotonic()
    docker("service", "scale", f"{SERVICE}=4", timeout=300)
    replicas = wait_for("4 healthy replicas", lambda: _healthy_replicas(swarm, 4), tries=180)
    scaled = time.monotonic() - began
    before = {c: _processed(c) for c in replicas}

    def every_replica_answered() -> bool | None:
        # No actor in the URL: least connections over the replicas nginx has synced.
        (answer,) = call(swarm.url(), "test_actor", {"input": 1})
        assert answer.error is None, answer.error
        return True if all(_processed(c) > before[c] for c in replicas) else None

    wait_for("every replica to answer a call through the balancer", every_replica_answered,
             tries=60, pause=0.2)
    targets = wait_for("Prometheus to scrape 4 replicas", lambda: _targets_up(swarm, 4),
                       tries=60)
    assert len(set(targets)) == 4
    assert wait_for("the exporters to be scraped", lambda: _exporters_up(swarm), tries=60) == [
        "nginx", "node", "redis"]

    phase("scaled, every replica answered, targets up")
    # --- A rolling update under a steady stream of calls ------------------------------
    docker("tag", IMAGE, ROLLED_IMAGE)
    stop = threading.Event()
    streams: list[list[tuple[str, Any]]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=_steady_stream,
                                args=(swarm, stop, "test_actor" if i % 2 else None, streams[i]))
               for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for("the stream to flow", lambda: True if all(streams) else None, tries=60)
        began = time.monotonic()
        # The CLI waits until the update converged (every task replaced, start first).
        docker("service", "update", "--image", ROLLED_IMAGE, SERVICE, timeout=900)
        wait_for("the update to complete (after its monitor period)", _update_completed,
                 tries=120)
        rolled = time.monotonic() - began
        during = [len(s) for s in streams]
        wait_for("calls after the update", lambda: True if all(
            len(s) > n for s, n in zip(streams, during, strict=True)) else None, tries=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    outcomes = [o for s in streams for o in s]
    failed = [o for o in outcomes if o[0] != "ok"]
    assert failed == [], f"{len(failed)} of {len(outcomes)} calls failed: {failed[:5]}"
    images = docker("service", "ps", SERVICE, "--filter", "desired-state=running",
                    "--format", "{{.Image}}").split()
    assert images == [ROLLED_IMAGE] * 4
    assert len(set(swarm.replicas()) & set(replicas)) == 0, "every replica was replaced"

    phase("rolled")
    # --- Redis keeps its data on its volume across a restart --------------------------
    (first,) = call(swarm.url("test_actor"), "test_actor", {"input": 1})
    assert first.outputs is not None
    docker("service", "update", "--force", f"{STACK}_redis", timeout=300)
    wait_for("/ready through the balancer after Redis restarted",
             lambda: _ready_through_balancer(swarm), tries=120)

    def next_counter() -> int | None:
        (answer,) = call(swarm.url("test_actor"), "test_actor", {"input": 1})
        return int(answer.outputs["counter"]) if answer.outputs else None

    assert wait_for("a call after the Redis restart", next_counter, tries=60) == (
        first.outputs["counter"] + 1)

    phase("redis restarted")
    # --- docker stack rm leaves nothing behind (the data volumes, deliberately) -------
    began = time.monotonic()
    docker("stack", "rm", STACK)
    namespace = f"label=com.docker.stack.namespace={STACK}"
    wait_for("the stack's containers to go",
             lambda: True if not docker("ps", "-aq", "--filter", namespace).strip() else None,
             tries=180)
    wait_for("the stack's network to go",
             lambda: True if not docker("network", "ls", "-q", "--filter", namespace).strip()
             else None, tries=60)
    removed = time.monotonic() - began
    assert docker("service", "ls", "-q").strip() == ""
    assert docker("config", "ls", "-q", "--filter", namespace).strip() == ""
    sandboxes = [c for host in swarm.replica_hosts for c in docker(
        "ps", "-aq", "--filter", f"label={OWNER_HOST_LABEL}={host}").split()]
    assert sandboxes == [], "the replicas left sandbox containers behind"
    volumes = docker("volume", "ls", "-q", "--filter", namespace).split()
    assert sorted(volumes) == [f"{STACK}_prometheus-data", f"{STACK}_redis-data"]
    print(f"\nswarm: deploy {deployed:.0f} s, scale 2->4 {scaled:.0f} s, rolling update of 4 "
          f"{rolled:.0f} s with {len(outcomes)} calls all answered, stack rm {removed:.0f} s")


def test_the_stack_file_agrees_with_the_configs_it_serves() -> None:
    """Static checks, no engine: what the swarm test relies on, stated against the
    rendered configs (so a changed port or drain timeout cannot silently break it)."""
    stack = yaml.safe_load((REPO_ROOT / "docker-stack.yml").read_text())
    config = yaml.safe_load((REPO_ROOT / "compose" / "microsandbox.yaml").read_text())
    server = config["server"]
    services = stack["services"]
    for name, service in services.items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name  # no IPVS needed
        for port in service.get("ports", []):
            assert port["mode"] == "${MSBX_PUBLISH_MODE:-host}", name
    sandbox = services["microsandbox"]
    grace = sandbox["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > server["drain_timeout"]
    assert sandbox["deploy"]["update_config"]["order"] == "start-first"
    assert sandbox["deploy"]["rollback_config"]["order"] == "start-first"
    assert f"http://127.0.0.1:{server['http_port']}/ready" in " ".join(
        sandbox["healthcheck"]["test"])
    assert "/etc/microsandbox/microsandbox.yaml" in sandbox["entrypoint"][-1]
    assert "@redis:6379/0" in sandbox["entrypoint"][-1]
    nginx = services["nginx"]
    assert nginx["command"] == ["nginx-upstream-sync"]
    assert int(nginx["environment"]["MSBX_READY_PORT"]) == server["http_port"]
    assert nginx["environment"]["MSBX_UPSTREAM_DNS"] == "tasks.microsandbox"
    nginx_conf = (REPO_ROOT / "compose" / "nginx-loadbalancer.conf").read_text()
    assert f"# node={nginx['environment']['MSBX_UPSTREAM_NODE']}" in nginx_conf
    assert "listen 8080;" in nginx_conf and nginx["ports"][0]["target"] == 8080
    prometheus = yaml.safe_load((REPO_ROOT / "compose" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "microsandbox"]
    assert job["dns_sd_configs"][0]["names"] == ["microsandbox"]  # dnsrr: every task
    assert job["dns_sd_configs"][0]["port"] == server["metrics_port"]
    for entry in stack["configs"].values():
        path = entry["file"].replace("${MICROSANDBOX_ACTORS_DIR:-./examples}", "./examples")
        assert (REPO_ROOT / path).is_file(), path
