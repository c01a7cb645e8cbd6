"""The deploy-then-call path through the rendered load balancer: a real nginx in front of
two real nodes (127.0.0.1 and 127.0.0.2) on one real Redis, with auth on, driven by a
client that behaves as Reflow's configured with the balancer's ``api_url`` and
``ws_url``. A deploy lands on one node, status polls alternate, calls land on both,
the count is cluster-wide, and an undeploy stops the function on every node."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reflow_microsandbox.server import Server
from tests.nginx_server import Balancer, port_free_on
from tests.provisioning import conftest as provisioning
from tests.provisioning.conftest import TEST_SECRETS, output_of
from tests.provisioning.test_balancer import NODES
from tests.server.clients import ReflowClient

from .conftest import NODE_FUNCTION, PYTHON_FUNCTION, function_config
from .dynasb_client import DeployFailed, DynAsbClient

ansible = provisioning.ansible
TOKEN = "cluster-token-4b1d9e"


def _served_calls(server: Server) -> float:
    """Successful process calls this node answered (from its own metrics)."""
    total = 0.0
    for family in text_string_to_metric_families(server.metrics.exposition().decode()):
        for sample in family.samples:
            if (
                sample.name == "microsandbox_rpc_requests_total"
                and sample.labels.get("method") == "process"
                and sample.labels.get("code") == "ok"
            ):
                total += sample.value
    return total


async def _reflow_through(lb_port: int) -> DynAsbClient:
    """What a Reflow user configures: the balancer for both URLs, the token as the
    password and in the WebSocket path; returned once nginx listens."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # bounded: until nginx listens
            try:
                async with session.get(f"http://127.0.0.1:{lb_port}/health"):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    return DynAsbClient(
        f"http://reflow:{TOKEN}@127.0.0.1:{lb_port}", f"ws://127.0.0.1:{lb_port}/ws/{TOKEN}"
    )


@pytest.fixture
async def cluster(
    ansible: provisioning.AnsibleRunner,
    scripts: Path,
    tmp_path: Path,
    redis_url: str,
    dependency_cache: Path,
) -> AsyncIterator[tuple[int, dict[str, Server], Path]]:
    http_port, ws_port, lb_port = (port_free_on(list(NODES.values())) for _ in range(3))
    rendered = tmp_path / "render"
    result = await asyncio.to_thread(
        ansible.render,
        "local",
        rendered,
        {
            **TEST_SECRETS,
            "nginx_lb_backends": [{"name": n, "address": a} for n, a in NODES.items()],
            "nginx_lb_http_port": http_port,
            "nginx_lb_ws_port": ws_port,
            "nginx_lb_listen_address": "127.0.0.1",
            "nginx_lb_listen_port": lb_port,
            "nginx_lb_access_log": str(tmp_path / "access.log"),
        },
    )
    assert result.returncode == 0, output_of(result)
    include = tmp_path / "microsandbox-loadbalancer.conf"
    shutil.copy(rendered / "localhost" / "nginx-loadbalancer.conf", include)
    nodes: dict[str, Server] = {}
    balancer = Balancer(tmp_path, include)
    try:
        for name, address in NODES.items():
            config = function_config(
                scripts,
                tmp_path / name,
                redis_url,
                dependency_cache / name,
                server={
                    "host": address, "http_port": http_port, "ws_port": ws_port,
                    "metrics_port": 0,
                },
                auth={"tokens": [TOKEN]},
            )  # fmt: skip
            node = Server(config)
            await node.__aenter__()
            nodes[name] = node
        for node in nodes.values():
            assert await node.pool.wait_warmed(60)
        balancer.start()
        yield lb_port, nodes, tmp_path / "access.log"
    finally:
        balancer.stop()
        for node in nodes.values():
            await node.stop()


async def test_functions_deploy_and_run_through_the_balancer_on_every_node(
    cluster: tuple[int, dict[str, Server], Path],
) -> None:
    lb_port, nodes, access_log = cluster
    reflow = await _reflow_through(lb_port)

    python_id = await reflow.deploy("multiplier", "python", PYTHON_FUNCTION)
    node_id = await reflow.deploy("js_multiplier", "nodejs", NODE_FUNCTION)

    # Two connections at once through the balancer go to the two nodes (least_conn).
    before = {name: _served_calls(node) for name, node in nodes.items()}
    async with reflow.connect(python_id) as first, reflow.connect(python_id) as second:
        replies = [
            await first.process("multiplier", {"input": 1}),
            await second.process("multiplier", {"input": 2}),
            await first.process("multiplier", {"input": 3}),
        ]
    assert [r.outputs for r in replies] == [
        {"output": 2, "calls": 1},
        {"output": 4, "calls": 2},  # state shared through Redis across the nodes
        {"output": 6, "calls": 3},
    ]
    assert all(r.pushes and r.pushes[0].port == "progress" for r in replies)
    served = {name: _served_calls(node) - before[name] for name, node in nodes.items()}
    assert sorted(served.values()) == [1, 2], served

    # The same function called on each node directly, whichever took the deploy.
    for name, node in nodes.items():
        url = f"ws://{NODES[name]}:{node.ws_port}/ws/{TOKEN}/{python_id}"
        async with ReflowClient(url) as direct:
            reply = await direct.process("multiplier", {"input": 10})
        assert reply.error is None, reply.raw
        assert reply.outputs is not None and reply.outputs["output"] == 20
        async with ReflowClient(f"ws://{NODES[name]}:{node.ws_port}/ws/{TOKEN}/{node_id}") as js:
            assert (await js.process("js_multiplier", {"input": 2})).outputs is not None
    assert (await reflow.status(python_id)).invocation_count == 5
    assert (await reflow.status(node_id)).invocation_count == 2

    # Undeployed through the balancer: the next call fails on every node.
    await reflow.undeploy(python_id)
    for name, node in nodes.items():
        url = f"ws://{NODES[name]}:{node.ws_port}/ws/{TOKEN}/{python_id}"
        async with ReflowClient(url) as direct:
            reply = await direct.process("multiplier", {"input": 1})
        assert reply.error is not None and reply.error["data"]["kind"] == "not_found", name
    with pytest.raises(DeployFailed, match="removed"):
        await reflow.wait_ready(python_id, 5)
    async with reflow.connect(node_id) as js:
        assert (await js.process("js_multiplier", {"input": 1})).outputs is not None

    # nginx logged the requests, never the token.
    text = await asyncio.to_thread(access_log.read_text)
    assert "/api/v1/functions" in text
    assert TOKEN not in text


async def test_a_deploy_the_draining_node_refuses_is_retried_on_the_other_node(
    cluster: tuple[int, dict[str, Server], Path],
) -> None:
    lb_port, nodes, access_log = cluster
    reflow = await _reflow_through(lb_port)
    slow = await reflow.deploy("slow", "python", "import time\ndef process(c):\n  time.sleep(3)\n")
    draining = nodes["a"]
    url = f"ws://{NODES['a']}:{draining.ws_port}/ws/{TOKEN}/{slow}"
    async with ReflowClient(url) as held:
        call = asyncio.create_task(held.process("slow", {}))
        for _ in range(300):  # bounded: until node a runs the call
            if draining.dispatcher.in_flight:
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(draining.stop())
        for _ in range(300):
            if draining.functions.draining:
                break
            await asyncio.sleep(0.01)
        # Round robin sends about half of these to the draining node first.
        ids = [await reflow.deploy(f"late{i}", "python", PYTHON_FUNCTION) for i in range(4)]
        assert (await call).outputs == {}
    await stopping
    assert len(set(ids)) == 4
    text = await asyncio.to_thread(access_log.read_text)
    assert "upstream_status=503, 200" in text  # refused by a, then served by b
