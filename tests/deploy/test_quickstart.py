"""The deployment guide's quick start on this machine: scripts/compose-up.sh once (a
generated password kept in the env file, every image built from this repository), then
the guide's own ``docker-compose up -d`` and its checks: ``docker-compose ps``,
``curl localhost:5555/health``, ``curl localhost:8080/health`` and the WebSocket test
message on 5556. Real docker-compose, real containers; the published ports are free
loopback ports given through docker-compose.yml's variables, the env file is temporary,
and the stack is taken down afterwards (volumes too)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.conftest import REPO_ROOT

from .support import free_port, require_engine, wait_for

pytestmark = pytest.mark.deploy


@pytest.fixture
def quickstart(deploy_locked: None, tmp_path: Path) -> Iterator[dict[str, str]]:
    require_engine()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"msbxquick{secrets.token_hex(4)}",
        "COMPOSE_ENV_FILE": str(tmp_path / "env"),
        "MICROSANDBOX_LB_PORT": str(free_port()),
        "MICROSANDBOX_HTTP_PORT": str(free_port()),
        "MICROSANDBOX_WS_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
    }
    env.pop("REDIS_PASSWORD", None)  # it must come from the env file
    try:
        yield env
    finally:
        subprocess.run(["docker-compose", "--env-file", env["COMPOSE_ENV_FILE"], "down", "-v",
                        "--remove-orphans", "-t", "10"],
                       cwd=REPO_ROOT, env=env, capture_output=True, timeout=300)


def _compose(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["docker-compose", "--env-file", env["COMPOSE_ENV_FILE"], *args],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"docker-compose {args}: {result.stderr}"
    return result.stdout


def _get(port: str, path: str) -> tuple[int, bytes] | None:
    with urllib.request.urlopen(f"http://localhost:{port}{path}", timeout=5) as reply:
        return reply.status, reply.read()


@pytest.mark.timeout(1800)
def test_one_command_then_the_guides_compose_up_and_its_checks_answer(
    quickstart: dict[str, str],
) -> None:
    env = quickstart
    first = subprocess.run([str(REPO_ROOT / "scripts" / "compose-up.sh")], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=1700)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    env_file = Path(env["COMPOSE_ENV_FILE"])
    password = env_file.read_text()
    assert password.startswith("REDIS_PASSWORD=") and len(password.strip()) > 40
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # The guide's first command, as it is, now works (and changes nothing).
    _compose(env, "up", "-d")
    assert env_file.read_text() == password  # kept, not regenerated

    listed = _compose(env, "ps")
    for service in ("redis", "microsandbox", "nginx", "prometheus"):
        assert any(service in line and " Up " in f" {line} " for line in listed.splitlines()), (
            listed)

    # curl http://localhost:5555/health and http://localhost:8080/health
    assert wait_for("/health on 5555", lambda: _get(env["MICROSANDBOX_HTTP_PORT"], "/health"),
                    tries=60) == (200, b"ok\n")
    assert _get(env["MICROSANDBOX_LB_PORT"], "/health") == (200, b"ok\n")
    wait_for("/ready through the balancer",
             lambda: _get(env["MICROSANDBOX_HTTP_PORT"], "/ready"), tries=60)

    # wscat -c ws://localhost:5556, then the guide's test message.
    with connect(f"ws://localhost:{env['MICROSANDBOX_WS_PORT']}", open_timeout=10) as ws:
        ws.send('{"jsonrpc":"2.0","method":"list","params":{},"id":1}')
        reply = json.loads(ws.recv(timeout=30))
    assert reply["id"] == 1 and "error" not in reply, reply
    assert {"test_actor", "test_actor_js"} <= set(reply["result"]["actors"])
