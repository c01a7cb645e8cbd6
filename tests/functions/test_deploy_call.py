"""Reflow's deploy-then-call path against one real node: deploy by REST, poll until
ready, call over ``<ws base>/<id>`` with pushes and state, count, undeploy."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reflow_microsandbox.server import Server
from tests.server.clients import RawClient

from .conftest import NODE_FUNCTION, PYTHON_FUNCTION, StartNode, client_for
from .dynasb_client import DeployFailed, DynAsbClient


async def metric(server: Server, name: str, **labels: str) -> float:
    """A sample's value from the node's real /metrics endpoint (0 when absent)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_python_and_javascript_functions_deploy_run_count_and_undeploy(
    store: str,
    start_node: StartNode,
) -> None:
    server = await start_node(store=store)
    reflow = client_for(server)

    python_id = await reflow.deploy("multiplier", "python", PYTHON_FUNCTION)
    node_id = await reflow.deploy("js_multiplier", "nodejs", NODE_FUNCTION)
    assert python_id != node_id
    status = await reflow.status(python_id)
    assert (status.id, status.name, status.runtime, status.state) == (
        python_id, "multiplier", "python", "ready",
    )  # fmt: skip
    assert status.invocation_count == 0

    for function_id, name, factor in ((python_id, "multiplier", 2), (node_id, "js_mult", 3)):
        async with reflow.connect(function_id) as actor:
            # Reflow sends the component name; any name runs the deployed function.
            first = await actor.process(name, {"input": 7})
            second = await actor.process(name + "-other", {"input": 5})
        assert first.error is None and second.error is None, (first.raw, second.raw)
        assert first.outputs == {"output": 7 * factor, "calls": 1}
        assert second.outputs == {"output": 5 * factor, "calls": 1}  # its own state key
        assert [(p.port, p.data) for p in first.pushes] == [("progress", {"seen": 7})]
        assert first.pushes[0].actor_id == name
        assert first.pushes[0].timestamp > 1_600_000_000_000
        assert (await reflow.status(function_id)).invocation_count == 2

    async with reflow.connect(python_id) as actor:
        third = await actor.process("multiplier", {"input": 1})
        assert third.outputs == {"output": 2, "calls": 2}  # state kept between connections
        await reflow.undeploy(python_id)
        after = await actor.process("multiplier", {"input": 1})
    assert after.outputs is None and after.error is not None
    assert after.error["code"] == -32010
    assert after.error["data"]["kind"] == "not_found"
    assert python_id in after.error["message"] and "not deployed" in after.error["message"]
    with pytest.raises(DeployFailed, match="removed"):
        await reflow.wait_ready(python_id, 5)
    async with reflow.connect(node_id) as actor:  # the other function is untouched
        assert (await actor.process("js_mult", {"input": 1})).outputs == {"output": 3, "calls": 2}
    assert await metric(server, "microsandbox_function_undeploys_total", outcome="removed") == 1


async def test_the_same_code_deployed_again_is_stored_and_checked_once(
    start_node: StartNode,
) -> None:
    server = await start_node()
    reflow = client_for(server)
    checks_before = await metric(
        server, "microsandbox_sandboxes_killed_total", language="python", reason="unload"
    )
    # Reflow deploys once per actor instance of a graph, all at once.
    ids = await asyncio.gather(
        *(reflow.deploy("multiplier", "python", PYTHON_FUNCTION) for _ in range(5))
    )
    assert len(set(ids)) == 5
    deploys = "microsandbox_function_deploys_total"
    assert await metric(server, deploys, runtime="python", outcome="new") == 1
    assert await metric(server, deploys, runtime="python", outcome="cached") == 4
    # One syntax-check sandbox for the five deploys (it is removed in the background).
    killed = "microsandbox_sandboxes_killed_total"
    for _ in range(200):  # bounded: until the check's sandbox is gone
        checks = await metric(server, killed, language="python", reason="unload") - checks_before
        if checks:
            break
        await asyncio.sleep(0.02)
    assert checks == 1
    client = server.store.client  # type: ignore[attr-defined]
    assert len(await client.keys("microsandbox:fn:code:*")) == 1
    assert len(await client.keys("microsandbox:fn:fn:*")) == 5
    assert await metric(server, "microsandbox_functions_deployed") in (4, 5)  # refreshed async

    # Each instance is its own deployment: undeploying one leaves the others running.
    await reflow.undeploy(ids[0])
    async with reflow.connect(ids[1]) as actor:
        reply = await actor.process("multiplier", {"input": 4})
    assert reply.outputs == {"output": 8, "calls": 1}
    assert (await reflow.status(ids[1])).invocation_count == 1
    assert (await reflow.status(ids[2])).invocation_count == 0


async def test_the_syntax_check_compiles_without_running_the_script(
    start_node: StartNode,
) -> None:
    server = await start_node()
    reflow = client_for(server)
    # Top-level code that never ends: were it run by the deploy, the deploy would hang.
    python = "while True:\n    pass\n\ndef process(context):\n    return {}\n"
    node = "while (true) {}\nfunction process(context) { return {}; }\n"
    for runtime, code in (("python", python), ("nodejs", node)):
        status, body = await asyncio.wait_for(reflow.deploy_raw("spin", runtime, code), 15)
        assert (status, body["success"]) == (200, True), body


async def test_timeout_seconds_limits_calls_up_to_the_servers_maximum(
    start_node: StartNode,
) -> None:
    server = await start_node(sandbox={"call_timeout": 3.0})
    reflow = client_for(server)
    code = "import time\n\ndef process(context):\n    time.sleep(context.get_input('s'))\n"
    short = await reflow.deploy("sleeper", "python", code, timeout_seconds=1)
    long = await reflow.deploy("sleeper", "python", code, timeout_seconds=600)
    async with reflow.connect(short) as actor:
        quick = await actor.process("sleeper", {"s": 0})
        stopped = await actor.process("sleeper", {"s": 2})
    assert quick.error is None
    assert stopped.error is not None and stopped.error["data"]["kind"] == "timeout"
    assert "longer than 1 s" in stopped.error["message"]
    async with reflow.connect(long) as actor:
        capped = await actor.process("sleeper", {"s": 5})
    assert capped.error is not None and capped.error["data"]["kind"] == "timeout"
    assert "longer than 3 s" in capped.error["message"]  # the server's maximum


@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_an_unused_function_expires_and_frees_its_place(
    store: str,
    start_node: StartNode,
) -> None:
    server = await start_node(store=store, functions={"idle_timeout": 1.5, "max_functions": 1})
    reflow = client_for(server)
    function_id = await reflow.deploy("multiplier", "python", PYTHON_FUNCTION)
    _, refused = await reflow.deploy_raw("other", "python", PYTHON_FUNCTION)
    assert refused["success"] is False and "max_functions" in refused["error"]
    for _ in range(200):  # bounded: until the store dropped it
        _, body = await reflow._request("GET", f"/api/v1/functions/{function_id}")
        if body["state"] == "removed":
            break
        await asyncio.sleep(0.1)
    assert body["state"] == "removed"
    async with reflow.connect(function_id) as actor:
        reply = await actor.process("multiplier", {"input": 1})
    assert reply.error is not None and reply.error["data"]["kind"] == "not_found"
    assert await reflow.deploy("other", "python", PYTHON_FUNCTION)  # the place is free again


async def test_calls_on_one_connection_start_in_the_order_sent(
    start_node: StartNode,
) -> None:
    # One sandbox per actor: start order is then also run order, visible in its state.
    server = await start_node(sandbox={"pool": {"max_per_actor": 1}})
    reflow = client_for(server)
    code = (
        "async def process(context):\n"
        "    seen = await context.get_state('seen', [])\n"
        "    seen.append(context.get_input('n'))\n"
        "    await context.set_state('seen', seen)\n"
        "    return {'seen': len(seen)}\n"
    )
    function_id = await reflow.deploy("sequence", "python", code)
    client = await RawClient.open(reflow.ws_url + "/" + function_id)
    try:
        for n in range(30):
            await client.send(
                {"jsonrpc": "2.0", "id": str(n), "method": "process",
                 "params": {"actor_id": "sequence", "payload": {"n": n},
                            "state": {"namespace": "default", "actor_id": "sequence"}}}
            )  # fmt: skip
        answers = [await client.recv(timeout=60) for _ in range(30)]
    finally:
        await client.close()
    assert [a["id"] for a in answers] == [str(n) for n in range(30)]
    tx = server.store.transaction("default", "sequence")
    try:
        assert await tx.get("seen") == list(range(30))
    finally:
        await tx.abort()
    assert (await reflow.status(function_id)).invocation_count == 30


async def test_a_call_on_an_id_never_deployed_fails_with_not_found(server: Server) -> None:
    reflow = DynAsbClient(
        f"http://127.0.0.1:{server.http_port}", f"ws://127.0.0.1:{server.ws_port}/ws"
    )
    ghost = "fn-" + "0" * 32
    async with reflow.connect(ghost) as actor:
        reply = await actor.process("anything", {})
    assert reply.error is not None and reply.error["code"] == -32010
    status, body = await reflow._request("GET", f"/api/v1/functions/{ghost}")
    assert status == 404 and body["state"] == "removed"
    with pytest.raises(DeployFailed, match="removed"):
        await reflow.wait_ready(ghost, 5)
