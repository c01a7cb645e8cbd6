"""Real servers for the end-to-end tests: real sockets, bubblewrap sandboxes, redis-server.

Servers run in the test's own event loop (``start_server``) on ephemeral loopback
ports, or as subprocesses (``ServerProcess``) when a test needs a second process or
a signal. Script folders are temporary copies: the seed guide's example verbatim
plus a few small actors written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import uvloop

from reflow_microsandbox.config import Config, deep_merge, parse_config
from reflow_microsandbox.server import Server
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]

# The seed guide's example, verbatim (used when examples/test_actor.py is missing).
SEED_ACTOR = """# test_actor.py
@actor
async def process(context):
    # Test compression with large data
    large_data = "x" * 10000  # Will be compressed
    await context.send_output("test", large_data)
    
    # Test Redis state
    counter = await context.get_state("counter", 0)
    await context.set_state("counter", counter + 1)
    
    return {"status": "success", "counter": counter}
"""  # noqa: W293 (the guide's text, trailing spaces included)

HELPER_ACTORS = {
    "echo.py": """
@actor({"component": "echo", "inports": ["data"], "outports": ["out"]})
def process(context):
    return {"out": context.get_input("data")}
""",
    "pusher.py": """
@actor(name="pusher", outports=["out"])
async def process(context):
    for i in range(context.get_input("count", 3)):
        await context.send_output("out", i)
    print("pushed", context.get_input("count", 3))
    return {"done": True}
""",
    "slow.py": """
import time

@actor(name="slow")
async def process(context):
    await context.send_output("started", True)
    time.sleep(context.get_input("seconds", 1))
    return {"slept": context.get_input("seconds", 1)}
""",
    "failing.py": """
@actor(name="failing")
def process(context):
    raise ValueError("this actor always fails")
""",
    "sequence.py": """
@actor(name="sequence")
async def process(context):
    seen = await context.get_state("seen", [])
    seen.append(context.get_input("n"))
    await context.set_state("seen", seen)
    return {"seen": len(seen)}
""",
    "flags.py": """
@actor(name="flags")
async def process(context):
    await context.set_state("flag", context.get_input("value"))
    return {"ok": True}
""",
    "looper.py": """
@actor(name="looper")
def process(context):
    while True:
        pass
""",
}
NODE_ACTOR = """
const metadata = {"component": "js_echo", "inports": ["data"], "outports": ["out"]};

async function process(context) {
  await context.sendOutput("pushed", context.getInput("data"));
  return {out: context.getInput("data")};
}

module.exports = {metadata, process};
"""


def write_scripts(folder: Path) -> Path:
    """A script folder with the seed example and the helper actors."""
    folder.mkdir(parents=True, exist_ok=True)
    seed = REPO / "examples" / "test_actor.py"
    if seed.exists():
        shutil.copy(seed, folder / "test_actor.py")
    else:
        (folder / "test_actor.py").write_text(SEED_ACTOR)
    for name, text in HELPER_ACTORS.items():
        (folder / name).write_text(text)
    (folder / "js_echo.js").write_text(NODE_ACTOR)
    return folder


def config_data(
    scripts: Path, state_dir: Path, redis_url: str | None, **overrides: Any
) -> dict[str, Any]:
    """The raw microsandbox.yaml mapping the tests use (small pools, short limits)."""
    data: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "max_message_size": 1024 * 1024,
            "drain_timeout": 15.0,
        },
        "sandbox": {
            "memory_mb": 128,
            "call_timeout": 10.0,
            "pool": {
                "python": {"min_instances": 1, "max_instances": 6},
                "nodejs": {"min_instances": 0, "max_instances": 2},
                "acquire_timeout": 20.0,
            },
        },
        "redis": {"url": redis_url},
        "state": {"sqlite_path": str(state_dir / "state.db")},
        "scripts": {"folders": [str(scripts)]},
        "logging": {"level": "warning"},
    }
    return deep_merge(data, overrides)


def make_config(scripts: Path, state_dir: Path, redis_url: str | None, **overrides: Any) -> Config:
    return parse_config(config_data(scripts, state_dir, redis_url, **overrides))


def ws_url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.ws_port}/{'?' + query if query else ''}"


def http_url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


# -- fixtures ------------------------------------------------------------------------------


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test here on uvloop, the loop ``serve`` runs on (control/cli.py).

    pytest-asyncio >= 1.4's hook (it replaces overriding ``event_loop_policy``). Bugs
    that only uvloop shows (it refuses ``umask=`` in subprocess calls, its transports
    are not asyncio.Transport subclasses) then fail here, not in production.
    """
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """A clean database on the session's redis-server (restarted if a test stopped it)."""
    redis_server.start()
    client = aioredis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    yield redis_server.url
    redis_server.start()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    return write_scripts(tmp_path / "scripts")


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start in-process servers on ephemeral ports; all are stopped after the test."""
    servers: list[Server] = []

    async def start(config: Config, *, warm: bool = True) -> Server:
        server = Server(config, ephemeral_ports=True)
        await server.__aenter__()
        servers.append(server)
        if warm:
            assert await server.pool.wait_warmed(60), "the pool did not warm within 60 s"
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
def config(scripts: Path, tmp_path: Path, redis_url: str) -> Config:
    """The default test config: Redis state, small pools."""
    return make_config(scripts, tmp_path, redis_url)


@pytest.fixture
async def server(start_server: StartServer, config: Config) -> Server:
    return await start_server(config)


# -- subprocess servers ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc children lists)."""
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        task_dir = Path(f"/proc/{current}/task")
        with contextlib.suppress(OSError):
            for task in task_dir.iterdir():
                with contextlib.suppress(OSError):
                    for child in (task / "children").read_text().split():
                        if int(child) not in found:
                            found.add(int(child))
                            stack.append(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ServerProcess:
    """``python -m reflow_microsandbox serve`` in a subprocess on fixed free ports (or the
    ports given; ``server.host`` of ``data`` is the address, 127.0.0.1 by default)."""

    def __init__(
        self,
        data: dict[str, Any],
        workdir: Path,
        *,
        ws_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        import yaml

        self.host = str(data.get("server", {}).get("host", "127.0.0.1"))
        self.ws_port = ws_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port
        data = deep_merge(
            data,
            {
                "server": {
                    "host": self.host,
                    "ws_port": self.ws_port,
                    "http_port": self.http_port,
                    "metrics_port": metrics_port,
                }
            },
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"microsandbox-{self.host}-{self.ws_port}.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.log_path = workdir / f"server-{self.host}-{self.ws_port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_env = dict(env or {})

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/"

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSANDBOX_")}
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reflow_microsandbox", "serve",
                 "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /ready until 200 (bounded), failing with the server's log."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited early:\n{self.log}")
                with contextlib.suppress(aiohttp.ClientError):
                    url = f"http://{self.host}:{self.http_port}/ready"
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def server_processes() -> Iterator[list[ServerProcess]]:
    """Subprocess servers a test starts; killed at the end if still running."""
    processes: list[ServerProcess] = []
    yield processes
    for process in processes:
        process.kill()
