"""Real servers for the deploy-then-call tests: in-process nodes on loopback, real
bubblewrap sandboxes, a real redis-server (or the SQLite file), and a dependency cache
that sandbox uids can read (pytest's own temp dirs are private to root)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reflow_microsandbox.config import Config, deep_merge, parse_config
from reflow_microsandbox.server import Server
from tests.server import conftest as _server
from tests.server.conftest import StartServer, config_data

from .dynasb_client import DynAsbClient

# The server tests' fixtures, shared with this folder.
redis_server = _server.redis_server
redis_url = _server.redis_url
scripts = _server.scripts
start_server = _server.start_server
config = _server.config
server = _server.server
server_processes = _server.server_processes
# The in-process servers here run on uvloop too, as ``serve`` does.
pytest_asyncio_loop_factories = _server.pytest_asyncio_loop_factories

PYTHON_FUNCTION = """
@actor({"component": "multiplier", "inports": ["input"], "outports": ["output"]})
async def process(context):
    value = context.get_input("input", 0)
    await context.send_output("progress", {"seen": value})
    calls = await context.increment_state("calls")
    return {"output": value * 2, "calls": calls}
"""

NODE_FUNCTION = """
const metadata = {"component": "js_multiplier", "inports": ["input"], "outports": ["output"]};

async function process(context) {
  const value = context.getInput("input", 0);
  await context.sendOutput("progress", {seen: value});
  const calls = await context.incrementState("calls");
  return {output: value * 3, calls};
}
module.exports = {metadata, process};
"""


@pytest.fixture
def dependency_cache() -> Iterator[Path]:
    """A cache folder below a world-searchable one, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="msb-deps-"))
    folder.chmod(0o755)
    try:
        yield folder / "cache"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def function_config(
    scripts: Path, state_dir: Path, redis_url: str | None, cache: Path, **overrides: Any
) -> Config:
    """The test config with the functions API's cache set (and small pools)."""
    data = config_data(scripts, state_dir, redis_url)
    data = deep_merge(
        data,
        {
            "sandbox": {"pool": {"nodejs": {"min_instances": 1, "max_instances": 3}}},
            "functions": {"dependency_cache": str(cache)},
        },
    )
    return parse_config(deep_merge(data, overrides))


StartNode = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_node(
    start_server: StartServer,
    scripts: Path,
    tmp_path: Path,
    redis_url: str,
    dependency_cache: Path,
) -> StartNode:
    """Starts a node for the functions API: ``store`` "redis" (the session's redis-server,
    shared by every node of a test) or "sqlite"; its own state folder and dependency cache
    by ``name``; keyword overrides merge into the config (``functions={...}``)."""

    async def start(*, name: str = "node", store: str = "redis", **overrides: Any) -> Server:
        state_dir = tmp_path / name
        state_dir.mkdir(exist_ok=True)
        url = redis_url if store == "redis" else None
        config = function_config(scripts, state_dir, url, dependency_cache / name, **overrides)
        return await start_server(config)

    return start


def api_url(server: Server, credentials: str = "") -> str:
    return f"http://{credentials}127.0.0.1:{server.http_port}"


def function_ws_url(server: Server, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{server.ws_port}/ws" + (f"/{token}" if token else "")


def client_for(server: Server, credentials: str = "", token: str | None = None) -> DynAsbClient:
    return DynAsbClient(api_url(server, credentials), function_ws_url(server, token))
