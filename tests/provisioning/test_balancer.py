"""The rendered load balancer, run by a real nginx in front of two real nodes on
loopback (127.0.0.1 and 127.0.0.2), routes the way Reflow relies on: /health from
the balancer itself, the HTTP API round robin, WebSocket RPC by least connections or
pinned per actor, and a drained node gets no new calls while its open ones go on."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from tests.nginx_server import Balancer, port_free_on

from .conftest import NGINX_CHECK, TEST_SECRETS, AnsibleRunner, output_of

NODES = {"a": "127.0.0.1", "b": "127.0.0.2"}


@dataclass(frozen=True)
class Ports:
    http: int
    ws: int
    balancer: int


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports(*(port_free_on(list(NODES.values())) for _ in range(3)))


@pytest.fixture(scope="module")
def rendered_balancer(
    ansible: AnsibleRunner, ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """templates/nginx-loadbalancer.conf.j2 rendered by ansible/render.yml for the two
    loopback nodes."""
    dest = tmp_path_factory.mktemp("balancer-render")
    result = ansible.render(
        "local",
        dest,
        {
            **TEST_SECRETS,
            "nginx_lb_backends": [{"name": n, "address": a} for n, a in NODES.items()],
            "nginx_lb_http_port": ports.http,
            "nginx_lb_ws_port": ports.ws,
            "nginx_lb_listen_address": "127.0.0.1",
            "nginx_lb_listen_port": ports.balancer,
            "nginx_lb_access_log": str(dest / "access.log"),
            # Keep a refused node out only briefly, so restored nodes rejoin quickly.
            "nginx_lb_fail_timeout": "1s",
            # The stub_status server (for the exporter) on a free port, not the fixed 8081.
            "nginx_stub_status_listen": f"127.0.0.1:{port_free_on(['127.0.0.1'])}",
        },
    )
    assert result.returncode == 0, output_of(result)
    return dest / "localhost" / "nginx-loadbalancer.conf"


async def _start_node(name: str, address: str, ports: Ports) -> list[web.AppRunner]:
    async def http_handler(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            await socket_.send_str(f"{name}:{message.data}")
        return socket_

    runners = []
    for port, handler in ((ports.http, http_handler), (ports.ws, ws_handler)):
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        runners.append(runner)
    return runners


@pytest.fixture
async def balancer(
    rendered_balancer: Path, ports: Ports, tmp_path: Path
) -> AsyncIterator[Balancer]:
    include = tmp_path / "microsandbox-loadbalancer.conf"
    shutil.copy(rendered_balancer, include)
    lb = Balancer(tmp_path, include)
    lb.start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # bounded: until nginx listens
                try:
                    async with session.get(f"http://127.0.0.1:{ports.balancer}/health"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        yield lb
    finally:
        lb.stop()


@pytest.fixture
async def nodes(ports: Ports) -> AsyncIterator[None]:
    runners = []
    for name, address in NODES.items():
        runners += await _start_node(name, address, ports)
    try:
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


async def _get(ports: Ports, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{ports.balancer}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def _rpc_node(connection: ClientConnection) -> str:
    await connection.send("ping")
    reply = str(await connection.recv())
    return reply.split(":", 1)[0]


def _ws_url(ports: Ports, actor: str | None = None) -> str:
    return f"ws://127.0.0.1:{ports.balancer}/" + (f"?actor={actor}" if actor else "")


async def test_balancer_answers_health_itself_even_with_every_node_down(
    balancer: Balancer, ports: Ports
) -> None:
    assert await _get(ports, "/health") == (200, "ok\n")
    status, _ = await _get(ports, "/ready")
    assert status == 502  # the readiness of the nodes is theirs to answer


async def test_http_api_alternates_round_robin_over_the_nodes(
    balancer: Balancer, nodes: None, ports: Ports
) -> None:
    answers = [(await _get(ports, "/ready"))[1] for _ in range(6)]
    assert sorted(set(answers)) == ["a", "b"]
    assert all(first != second for first, second in itertools.pairwise(answers))


async def test_websocket_rpc_with_an_actor_always_reaches_that_actors_node(
    balancer: Balancer, nodes: None, ports: Ports
) -> None:
    placement: dict[str, set[str]] = {}
    for index in range(16):
        actor = f"actor-{index}"
        for _ in range(3):
            async with connect(_ws_url(ports, actor)) as connection:
                placement.setdefault(actor, set()).add(await _rpc_node(connection))
    assert all(len(seen) == 1 for seen in placement.values()), placement
    assert set().union(*placement.values()) == {"a", "b"}


async def test_websocket_rpc_without_an_actor_goes_to_the_least_busy_node(
    balancer: Balancer, nodes: None, ports: Ports
) -> None:
    async with connect(_ws_url(ports)) as first, connect(_ws_url(ports)) as second:
        assert {await _rpc_node(first), await _rpc_node(second)} == {"a", "b"}


async def _run_drain(ansible: AnsibleRunner, balancer: Balancer, node: str, state: str) -> None:
    result = await asyncio.to_thread(
        ansible.playbook,
        "tests/provisioning/drain.yml",
        "localhost,",
        {
            "nginx_lb_config_path": str(balancer.include),
            "nginx_include_check": str(NGINX_CHECK),
            "nginx_drain_node": node,
            "nginx_drain_state": state,
            "nginx_drain_reload": False,
            "nginx_drain_settle_seconds": 0,
            "nginx_lb_backends": [{"name": n, "address": a} for n, a in NODES.items()],
        },
    )
    assert result.returncode == 0, output_of(result)
    await asyncio.to_thread(balancer.reload)


async def _actor_on(ports: Ports, node: str) -> str:
    for index in range(64):
        async with connect(_ws_url(ports, f"pinned-{index}")) as connection:
            if await _rpc_node(connection) == node:
                return f"pinned-{index}"
    raise AssertionError(f"no actor hashes to node {node}")


async def _http_nodes_after_reload(ports: Ports, expected: set[str]) -> list[str]:
    """HTTP answers once the reloaded workers serve (bounded: old workers may still
    take a request or two right after the reload signal)."""
    answers: list[str] = []
    for _ in range(100):
        answers = [(await _get(ports, "/ready"))[1] for _ in range(6)]
        if set(answers) == expected:
            return answers
        await asyncio.sleep(0.05)
    return answers


async def test_drained_node_gets_no_new_calls_keeps_its_open_ones_and_comes_back(
    ansible: AnsibleRunner, balancer: Balancer, nodes: None, ports: Ports
) -> None:
    actor = await _actor_on(ports, "a")
    async with connect(_ws_url(ports, actor)) as open_call:
        assert await _rpc_node(open_call) == "a"

        await _run_drain(ansible, balancer, "a", "down")
        assert balancer.include.read_text().count(" down; # node=a") == 3
        assert await _http_nodes_after_reload(ports, {"b"}) == ["b"] * 6
        async with connect(_ws_url(ports, actor)) as moved:
            assert await _rpc_node(moved) == "b"
        # The connection opened before the drain still reaches its node.
        assert await _rpc_node(open_call) == "a"

    await _run_drain(ansible, balancer, "a", "up")
    assert " down;" not in balancer.include.read_text()
    assert set(await _http_nodes_after_reload(ports, {"a", "b"})) == {"a", "b"}
    async with connect(_ws_url(ports, actor)) as back:
        assert await _rpc_node(back) == "a"


def test_drain_tasks_leave_an_unknown_node_and_the_rest_of_the_file_alone(
    ansible: AnsibleRunner, rendered_balancer: Path, tmp_path: Path
) -> None:
    include = tmp_path / "lb.conf"
    shutil.copy(rendered_balancer, include)
    before = include.read_text()
    result = ansible.playbook(
        "tests/provisioning/drain.yml",
        "localhost,",
        {
            "nginx_lb_config_path": str(include),
            "nginx_include_check": str(NGINX_CHECK),
            "nginx_drain_node": "c",
            "nginx_drain_state": "down",
            "nginx_drain_reload": False,
            "nginx_lb_backends": [{"name": n, "address": a} for n, a in NODES.items()],
        },
    )
    assert result.returncode == 0, output_of(result)
    assert include.read_text() == before


async def test_access_log_records_the_path_and_actor_but_never_the_token(
    balancer: Balancer, nodes: None, ports: Ports, rendered_balancer: Path
) -> None:
    status, _ = await _get(ports, "/ready?token=s3cret-token-value&actor=counter")
    assert status == 200
    log = rendered_balancer.parent.parent / "access.log"
    # nginx writes the line in its log phase, after the response went out: wait for it.
    for _ in range(100):  # bounded: up to ~5 s
        text = log.read_text()
        if 'actor="counter"' in text:
            break
        await asyncio.sleep(0.05)
    assert '"GET /ready HTTP/1.1"' in text
    assert 'actor="counter"' in text
    assert "s3cret-token-value" not in text
