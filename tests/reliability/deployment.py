"""A deployment of real parts on loopback, configured as Ansible configures one.

``ansible/render.yml`` renders ``templates/`` for the local inventory (nginx
balancer, redis.conf with AOF, microsandbox.yaml); then:

* a redis-server runs the rendered redis.conf (append-only file, ``everysec``,
  ``noeviction``, a password) on a free port, data in a private temp dir;
* one control-plane process per node (``reflow-microsandbox serve``) runs the rendered
  microsandbox.yaml with only ``server.host`` changed: node ``a`` on 127.0.0.1,
  ``b`` on 127.0.0.2, the same ports on both, as the balancer's upstreams expect;
* a real nginx runs the rendered balancer in front of them.

Clients connect to :meth:`Deployment.url` as Reflow connects to the balancer. Every
process is the test's own child; :meth:`Deployment.stop` ends them all. Used by the
reliability tests and by ``bench/load.py`` and ``bench/soak.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from reflow_microsandbox.config import deep_merge
from tests.nginx_server import Balancer, port_free_on
from tests.provisioning.conftest import AnsibleRunner, output_of
from tests.redis_server import RedisServer
from tests.server.conftest import ServerProcess, descendants, write_scripts

NODE_ADDRESSES = {"a": "127.0.0.1", "b": "127.0.0.2"}

# Actors the load and fault runs call, beside the seed example and the helpers of
# tests/server (echo, slow, looper, sequence, ...).
LOAD_ACTORS = {
    # The guide's artillery scenario calls actor "test": the seed example under that name.
    "test.py": """
@actor(name="test")
async def process(context):
    await context.send_output("test", "x" * 10000)
    counter = await context.get_state("counter", 0)
    await context.set_state("counter", counter + 1)
    return {"status": "success", "counter": counter}
""",
    # One update that touches two keys: a call applied twice or half shows in them.
    "ledger.py": """
@actor(name="ledger")
async def process(context):
    token = context.get_input("token")
    tokens = await context.get_state("tokens", [])
    total = await context.get_state("total", 0)
    tokens.append(token)
    await context.set_state("tokens", tokens)
    await context.set_state("total", total + 1)
    return {"total": total + 1}
""",
    # A stateless actor for flooding the node with fast calls.
    "flood.py": """
@actor(name="flood")
def process(context):
    return {"out": context.get_input("n")}
""",
    # Holds /tmp/<marker> open while it sleeps, so that a test can find its runner
    # process from outside (in /proc/<pid>/fd) and kill it.
    "holder.py": """
import time

@actor(name="holder")
def process(context):
    with open("/tmp/" + context.get_input("marker"), "w"):
        time.sleep(context.get_input("seconds", 0))
    return {"held": True}
""",
    # Abuse, for the storm: memory, CPU and output, chosen by the payload.
    "abuser.py": """
import sys

@actor(name="abuser")
def process(context):
    how = context.get_input("how")
    if how == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(8 * 1024 * 1024))
    if how == "loop":
        while True:
            pass
    if how == "flood":
        chunk = "y" * 65536
        while True:
            sys.stdout.write(chunk)
    return {"how": how}
""",
}


def write_load_scripts(folder: Path) -> Path:
    write_scripts(folder)
    for name, text in LOAD_ACTORS.items():
        (folder / name).write_text(text)
    return folder


class Rendered:
    """The configuration of a deployment, rendered once by ansible/render.yml.

    ``variables`` are extra Ansible variables (``microsandbox_*``, ``nginx_lb_*``,
    ``redis_*``). The ports are chosen free here and stay the deployment's; several
    deployments may be started from one rendering, one after the other.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: tuple[str, ...] = ("a", "b"),
        variables: dict[str, Any] | None = None,
        access_log: bool = False,
    ) -> None:
        self.workdir = workdir
        self.node_names = nodes
        self.extra = dict(variables or {})
        self.access_log = access_log
        self.scripts = write_load_scripts(workdir / "scripts")
        addresses = [NODE_ADDRESSES[name] for name in nodes]
        self.ws_port = port_free_on(addresses)
        self.http_port = port_free_on(addresses)
        self.metrics_port = port_free_on(addresses)
        self.lb_port = port_free_on(["127.0.0.1"])
        self.stub_status_port = port_free_on(["127.0.0.1"])
        self.redis_port = port_free_on(["127.0.0.1"])
        self.redis_password = secrets.token_hex(16)
        self.dir = workdir / "rendered" / "localhost"
        self.node_config: dict[str, Any] = {}

    def variables(self) -> dict[str, Any]:
        """The Ansible variables of the render (the local inventory's, plus these)."""
        base: dict[str, Any] = {
            "vault_redis_password": self.redis_password,
            "redis_port": self.redis_port,
            "redis_dir": str(self.workdir / "redis"),
            "redis_logfile": str(self.workdir / "redis" / "redis.log"),
            "redis_pidfile": str(self.workdir / "redis" / "redis.pid"),
            "redis_supervised": "no",
            "microsandbox_redis_port": self.redis_port,
            "microsandbox_http_port": self.http_port,
            "microsandbox_ws_port": self.ws_port,
            "microsandbox_metrics_port": self.metrics_port,
            "microsandbox_scripts_folders": [str(self.scripts)],
            "microsandbox_state_sqlite_path": str(self.workdir / "state.db"),
            "microsandbox_log_level": "info",
            "nginx_lb_backends": [
                {"name": name, "address": NODE_ADDRESSES[name]} for name in self.node_names
            ],
            "nginx_lb_http_port": self.http_port,
            "nginx_lb_ws_port": self.ws_port,
            "nginx_lb_listen_address": "127.0.0.1",
            "nginx_lb_listen_port": self.lb_port,
            "nginx_lb_access_log": (
                str(self.workdir / "access.log") if self.access_log else "off"
            ),
            # Keep a failed node out only briefly, so that a restored node rejoins soon.
            "nginx_lb_fail_timeout": "1s",
            # nginx's stub_status server (for its exporter) on a free port, not 8081.
            "nginx_stub_status_listen": f"127.0.0.1:{self.stub_status_port}",
            "microsandbox_functions_dependency_cache": str(self.workdir / "functions"),
        }
        return {**base, **self.extra}

    def render(self, ansible: AnsibleRunner) -> Rendered:
        """Render templates/ through ansible/render.yml (5 to 15 s)."""
        result = ansible.render("local", self.workdir / "rendered", self.variables())
        if result.returncode != 0:
            raise RuntimeError(f"ansible/render.yml failed:\n{output_of(result)}")
        (self.workdir / "redis").mkdir(exist_ok=True)  # redis.conf's dir must exist
        self.node_config = yaml.safe_load((self.dir / "microsandbox.yaml").read_text())
        return self


class Deployment:
    """Nodes behind nginx with Redis, from a :class:`Rendered` configuration.

    ``changes`` are laid over every node's rendered microsandbox.yaml (e.g. another
    sandbox backend or smaller pools); ``redis=False`` runs without Redis, state then
    in each node's SQLite file. ``node_dir`` holds the nodes' configs and logs and
    ``node_env`` is added to their environment. ``await`` :meth:`start`; :meth:`stop`
    ends it all.
    """

    def __init__(
        self,
        rendered: Rendered,
        workdir: Path,
        *,
        nodes: tuple[str, ...] | None = None,
        changes: dict[str, Any] | None = None,
        redis: bool = True,
        node_dir: Path | None = None,
        node_env: dict[str, str] | None = None,
    ) -> None:
        if not rendered.node_config:
            raise RuntimeError("render the configuration first")
        self.rendered = rendered
        self.workdir = workdir
        self.node_names = nodes or rendered.node_names
        self.changes = dict(changes or {})
        if not redis:
            self.changes = deep_merge(self.changes, {"redis": {"url": None}})
        self.changes = deep_merge(
            {"state": {"sqlite_path": str(workdir / "state.db")}}, self.changes
        )
        self.use_redis = redis
        self.node_dir = node_dir
        self.node_env = dict(node_env or {})
        self.redis: RedisServer | None = None
        self.nodes: dict[str, ServerProcess] = {}
        self.balancer: Balancer | None = None

    def node(
        self,
        name: str,
        *,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        **changes: Any,
    ) -> ServerProcess:
        """A node process (not started) from the rendered config, the changes laid over;
        its config and log go to ``workdir`` (default: under the deployment's)."""
        data = deep_merge(self.rendered.node_config, {"server": {"host": NODE_ADDRESSES[name]}})
        data = deep_merge(deep_merge(data, self.changes), changes)
        return ServerProcess(
            data,
            workdir or self.workdir / "nodes" / name,
            ws_port=self.rendered.ws_port,
            http_port=self.rendered.http_port,
            metrics_port=self.rendered.metrics_port,
            env=env,
        )

    async def start(self, *, ready_timeout: float = 90.0) -> Deployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.use_redis:
            self.redis = RedisServer(
                password=self.rendered.redis_password,
                port=self.rendered.redis_port,
                conf=self.rendered.dir / "redis.conf",
            )
            await asyncio.to_thread(self.redis.start)
        for name in self.node_names:
            workdir = self.node_dir / name if self.node_dir else None
            self.nodes[name] = self.node(name, workdir=workdir, env=self.node_env).start()
        include = self.workdir / "microsandbox-loadbalancer.conf"
        shutil.copy(self.rendered.dir / "nginx-loadbalancer.conf", include)
        (self.workdir / "nginx").mkdir(exist_ok=True)
        self.balancer = Balancer(self.workdir / "nginx", include, worker_connections=4096)
        self.balancer.start()
        await asyncio.gather(*(node.wait_ready(ready_timeout) for node in self.nodes.values()))
        await self.wait_balancer()
        return self

    async def wait_balancer(self, timeout: float = 30.0) -> None:
        """Until nginx answers its own /health (bounded)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.rendered.lb_port}/health"
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url) as reply:
                        if reply.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    log = self.balancer.error_log if self.balancer else ""
                    raise RuntimeError(f"nginx did not answer within {timeout} s:\n{log}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """End every process of the deployment (nodes with SIGKILL if SIGTERM is slow)."""
        for node in self.nodes.values():
            node.terminate()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.wait(30)
            node.kill()
        if self.balancer is not None:
            with contextlib.suppress(Exception):
                self.balancer.stop()
        if self.redis is not None:
            self.redis.close()

    # -- addresses and observations -------------------------------------------------------

    def url(self, actor: str | None = None) -> str:
        """The balancer's WebSocket URL (``?actor=`` pins the actor to one node)."""
        return f"ws://127.0.0.1:{self.rendered.lb_port}/" + (f"?actor={actor}" if actor else "")

    def node_of(self, pid: int) -> str | None:
        for name, node in self.nodes.items():
            if node.process is not None and node.process.pid == pid:
                return name
        return None

    def sandbox_pids(self, name: str) -> set[int]:
        """Every process below the node's control plane (its sandboxes)."""
        node = self.nodes[name]
        return descendants(node.process.pid) if node.process is not None else set()

    async def metrics(self, name: str) -> str:
        """The node's Prometheus exposition text."""
        address = NODE_ADDRESSES[name]
        url = f"http://{address}:{self.rendered.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            return await reply.text()

    async def ready(self, name: str) -> tuple[int, dict[str, Any]]:
        """The node's /ready status and body."""
        url = f"http://{NODE_ADDRESSES[name]}:{self.rendered.http_port}/ready"
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            return reply.status, await reply.json()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples in an exposition text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{wanted}"' in label_text for key, wanted in labels.items()):
            total += float(value)
    return total
