"""The components whose /metrics the monitoring tests read, each run for real on loopback.

- the control plane: ``reflow-microsandbox serve`` in a subprocess, driven through its
  HTTP JSON-RPC endpoint with successes, failures, a sandbox killed for memory, state
  use, and a flood of distinct method names, actor names and namespaces (which must
  not turn into label values);
- Debian's prometheus-redis-exporter in front of a real redis-server with a password
  (given through a password file, as the redis role does) that is filled past its
  maxmemory so it refuses writes;
- Debian's prometheus-nginx-exporter reading the stub_status of a real nginx running the
  balancer configuration rendered from templates/;
- Debian's prometheus-node-exporter reading this host.

Every process is started on free ports and stopped by the caller (:class:`Processes`).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.redis_server import RedisServer
from tests.server.conftest import config_data, write_scripts

HOG_ACTOR = """
@actor(name="hog")
def process(context):
    hogs = [bytearray(64 * 1024 * 1024) for _ in range(16)]
    return {"held": len(hogs)}
"""

FLOOD = 40
"""Distinct random method names, actor names and namespaces sent to the control plane."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``probe`` until it returns something truthy (bounded); fail with the last error."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, urllib.error.URLError, redis.RedisError) as error:
            last, value = error, None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what} (last error: {last!r})")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def scrape_once_it_shows(what: str, port: int, needle: str) -> str:
    """/metrics on ``port``, once it contains ``needle`` (bounded wait)."""

    def probe() -> str | None:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
        return text if needle in text else None

    return str(wait_until(what, probe))


class Processes:
    """Processes started for a test session, all stopped by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[subprocess.Popen[bytes]] = []
        self._redis: list[RedisServer] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._running.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def redis(self, password: str) -> RedisServer:
        server = RedisServer(password=password).start()
        self._redis.append(server)
        return server

    def stop(self) -> None:
        for process in reversed(self._running):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for server in self._redis:
            server.close()


def _rpc(port: int, body: bytes) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/rpc", data=body,
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read()
        return json.loads(text) if text else None


def _call(port: int, method: str, params: dict[str, Any] | None = None) -> Any:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": secrets.token_hex(4), "method": method}
    if params is not None:
        message["params"] = params
    return _rpc(port, json.dumps(message).encode())


def control_plane_metrics(processes: Processes) -> tuple[str, list[str]]:
    """The control plane's /metrics after a varied workload, and the flood's strings
    (random method names, actor names, namespaces) that must not appear in it."""
    workdir = processes.workdir / "control-plane"
    scripts = write_scripts(workdir / "scripts")
    (scripts / "hog.py").write_text(HOG_ACTOR)
    http_port, ws_port, metrics_port = free_port(), free_port(), free_port()
    data = config_data(scripts, workdir, None, server={
        "http_port": http_port, "ws_port": ws_port, "metrics_port": metrics_port,
    })  # fmt: skip
    config = workdir / "microsandbox.yaml"
    config.write_text(yaml.safe_dump(data))
    process = processes.start(
        "control-plane",
        [sys.executable, "-m", "reflow_microsandbox", "serve", "--config", str(config)],
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError("control plane exited:\n" + processes.log("control-plane"))
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=5) as reply:
            return bool(reply.status == 200)

    wait_until("the control plane to be ready", ready, timeout=120)

    for value in range(3):
        echoed = _call(http_port, "process", {"actor_id": "echo", "payload": {"data": value}})
        assert "result" in echoed, echoed
    assert "result" in _call(http_port, "process", {"actor_id": "test_actor"})
    failed = _call(http_port, "process", {"actor_id": "failing"})
    assert failed["error"]["data"]["kind"] == "script_error", failed
    hog = _call(http_port, "process", {"actor_id": "hog"})
    assert hog["error"]["data"]["kind"] == "memory", hog
    assert "result" in _call(http_port, "list")
    assert _rpc(http_port, b"{not json")["error"]["code"] == -32700

    flood: list[str] = []
    for _ in range(FLOOD):
        method, actor, namespace = (f"flood{secrets.token_hex(6)}" for _ in range(3))
        flood += [method, actor, namespace]
        assert _call(http_port, method)["error"]["code"] == -32601
        missing = _call(http_port, "process", {"actor_id": actor})
        assert missing["error"]["data"]["kind"] == "not_found"
        echoed = _call(http_port, "process", {
            "actor_id": "echo", "payload": {"data": actor},
            "state": {"namespace": namespace, "actor_id": actor},
        })  # fmt: skip
        assert "result" in echoed
    return scrape(f"http://127.0.0.1:{metrics_port}/metrics"), flood


def redis_exporter_metrics(processes: Processes) -> str:
    """prometheus-redis-exporter's /metrics for a Redis that has refused writes (OOM)."""
    password = "exp/" + secrets.token_hex(12) + '"q#'
    server = processes.redis(password)
    client = redis.Redis(host=server.host, port=server.port, password=password)
    client.config_set("maxmemory", "4mb")
    client.config_set("maxmemory-policy", "noeviction")
    refused = 0
    for index in range(64):  # bounded: 64 x 256 KiB is far past 4 MB
        try:
            client.set(f"actor:state:{index}", b"x" * 256 * 1024)
        except redis.exceptions.OutOfMemoryError:
            refused += 1
    assert refused > 0, "Redis never refused a write at maxmemory"
    client.close()

    url = f"redis://{server.host}:{server.port}"
    password_file = processes.workdir / "redis-exporter-password.json"
    password_file.write_text(json.dumps({url: password}))
    port = free_port()
    processes.start("redis-exporter", [
        "prometheus-redis-exporter", f"-redis.addr={url}",
        f"-redis.password-file={password_file}", f"-web.listen-address=127.0.0.1:{port}",
    ])  # fmt: skip
    return scrape_once_it_shows("the Redis exporter to read Redis", port, "\nredis_up 1\n")


def nginx_exporter_metrics(processes: Processes, balancer_conf: Path, balancer_port: int,
                           stub_status: str) -> str:
    """prometheus-nginx-exporter's /metrics for a real nginx running the rendered balancer."""
    prefix = processes.workdir / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(
        f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
        f"  include {balancer_conf};\n}}\n"
    )
    processes.start("nginx", ["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")])
    wait_until("nginx to answer /health",
               lambda: scrape(f"http://127.0.0.1:{balancer_port}/health") == "ok\n")
    port = free_port()
    processes.start("nginx-exporter", [
        "prometheus-nginx-exporter", f"-nginx.scrape-uri=http://{stub_status}/stub_status",
        "-nginx.retries=10", f"-web.listen-address=127.0.0.1:{port}",
    ])  # fmt: skip
    return scrape_once_it_shows(
        "the nginx exporter to read stub_status", port, "\nnginx_up 1\n"
    )


def node_exporter_metrics(processes: Processes) -> str:
    """prometheus-node-exporter's /metrics for this host."""
    port = free_port()
    processes.start("node-exporter", [
        "prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
    ])  # fmt: skip
    return scrape_once_it_shows("the node exporter to serve", port, "node_memory_MemTotal_bytes")
