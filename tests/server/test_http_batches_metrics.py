"""HTTP endpoints, batches and notifications on both transports, and the metrics endpoint."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from reflow_microsandbox.server import Server

from .clients import RawClient, ReflowClient
from .conftest import http_url, ws_url


async def post_rpc(server: Server, body: object) -> tuple[int, object]:
    url = http_url(server, "/api/v1/rpc")
    async with aiohttp.ClientSession() as session, session.post(url, data=json.dumps(body)) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


async def test_health_says_alive_and_ready_says_ready_once_warm(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url(server, "/health")) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with session.get(http_url(server, "/ready")) as response:
            assert response.status == 200
            assert (await response.json())["ready"] is True


async def test_http_rpc_collects_pushed_outputs_into_the_result(server: Server) -> None:
    status, reply = await post_rpc(
        server,
        {"jsonrpc": "2.0", "id": "h1", "method": "process",
         "params": {"actor_id": "pusher", "payload": {"count": 3}}},
    )  # fmt: skip
    assert status == 200
    assert reply == {"jsonrpc": "2.0", "id": "h1", "result": {"outputs": {"out": 2, "done": True}}}


async def test_http_rpc_answers_errors_batches_and_notifications(server: Server) -> None:
    status, reply = await post_rpc(server, {"jsonrpc": "2.0", "id": 9, "method": "nope"})
    assert status == 200 and reply["error"]["code"] == -32601  # type: ignore[index]
    status, reply = await post_rpc(
        server,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "process",
             "params": {"actor_id": "echo", "payload": {"data": "a"}}},
            {"jsonrpc": "2.0", "method": "process", "params": {"actor_id": "echo"}},
            {"jsonrpc": "2.0", "id": 2, "method": "list"},
        ],
    )  # fmt: skip
    assert status == 200
    assert isinstance(reply, list) and [r["id"] for r in reply] == [1, 2]
    assert reply[0]["result"] == {"outputs": {"out": "a"}}
    status, reply = await post_rpc(server, {"jsonrpc": "2.0", "method": "list"})
    assert status == 204 and reply is None
    url = http_url(server, "/api/v1/rpc")
    async with aiohttp.ClientSession() as session, session.post(url, data=b"{oops") as response:
        assert (await response.json())["error"]["code"] == -32700


async def test_websocket_batch_gets_one_array_and_pushes_still_stream_first(
    server: Server,
) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(
            [
                {"jsonrpc": "2.0", "id": "p", "method": "process",
                 "params": {"actor_id": "pusher", "payload": {"count": 2}}},
                {"jsonrpc": "2.0", "id": "e", "method": "process",
                 "params": {"actor_id": "echo", "payload": {"data": 5}}},
                {"jsonrpc": "2.0", "method": "list"},
                {"jsonrpc": "2.0", "id": "x", "method": "missing"},
            ]
        )  # fmt: skip
        frames = []
        while True:
            message = await client.recv()
            frames.append(message)
            if isinstance(message, list):
                break
        pushes, batch = frames[:-1], frames[-1]
        assert [p["params"]["data"] for p in pushes if p["method"] == "output"] == [0, 1]
        by_id = {r["id"]: r for r in batch}
        assert set(by_id) == {"p", "e", "x"}
        assert by_id["p"]["result"] == {"outputs": {"done": True}}
        assert by_id["e"]["result"] == {"outputs": {"out": 5}}
        assert by_id["x"]["error"]["code"] == -32601
    finally:
        await client.close()


async def test_websocket_notification_runs_but_gets_no_reply(server: Server) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(
            {"jsonrpc": "2.0", "method": "process",
             "params": {"actor_id": "flags", "payload": {"value": "set-by-notification"}}}
        )  # fmt: skip
        await client.send({"jsonrpc": "2.0", "method": "no_such_method"})
        response, before = await client.request(
            "process", {"actor_id": "echo", "payload": {"data": 1}}, id_="next"
        )
        assert before == []  # nothing came back for the two notifications
        assert response["result"] == {"outputs": {"out": 1}}
    finally:
        await client.close()
    tx = server.store.transaction("default", "flags")
    try:
        assert await tx.get("flag") == "set-by-notification"
    finally:
        await tx.abort()


async def test_javascript_actor_runs_end_to_end(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("js_echo", {"data": [1, "two", {"three": 3}]})
    assert reply.error is None, reply.error
    assert reply.outputs == {"out": [1, "two", {"three": 3}]}
    assert [(p.port, p.data) for p in reply.pushes] == [("pushed", [1, "two", {"three": 3}])]


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_endpoint_exposes_every_required_metric_with_sensible_values(
    server: Server,
) -> None:
    async with ReflowClient(ws_url(server)) as client:
        for _ in range(3):
            assert (await client.process("test_actor")).error is None
        assert (await client.process("failing")).error is not None
    zstd = await RawClient.open(ws_url(server, "compression=zstd"))
    try:
        await zstd.request("process", {"actor_id": "test_actor"})
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            async with session.get(url) as response:
                assert response.status == 200
                text = await response.text()
    finally:
        await zstd.close()
    samples = scrape(text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    names = {name for name, _ in samples}
    for required in (
        "microsandbox_active_sandboxes",
        "microsandbox_execution_duration_seconds_bucket",
        "microsandbox_memory_usage_bytes",
        "microsandbox_compression_ratio_count",
        "microsandbox_rpc_requests_total",
        "microsandbox_ws_connections",
        "microsandbox_pool_acquire_wait_seconds_count",
        "microsandbox_sandbox_start_seconds_count",
        "microsandbox_state_operations_total",
        "microsandbox_state_errors_total",
    ):
        assert required in names, required
    assert value("microsandbox_rpc_requests_total", method="process", code="ok") == 4
    assert value("microsandbox_rpc_requests_total", method="process", code="-32005") == 1
    assert (
        value("microsandbox_execution_duration_seconds_count", language="python", outcome="ok") == 4
    )
    assert (
        value(
            "microsandbox_execution_duration_seconds_count",
            language="python",
            outcome="script_error",
        )
        == 1
    )
    assert value("microsandbox_state_operations_total", op="get") == 4
    assert value("microsandbox_state_operations_total", op="set") == 4
    assert value("microsandbox_state_operations_total", op="commit") == 4
    assert value("microsandbox_state_errors_total") == 0
    # The 10 KB push to the zstd client was compressed far more than 10:1.
    assert value("microsandbox_compression_ratio_count") >= 1
    assert (
        value("microsandbox_compression_ratio_sum") / value("microsandbox_compression_ratio_count")
        > 10
    )
    # Sandboxes bound to test_actor and failing are idle now; memory is counted for them.
    assert value("microsandbox_active_sandboxes", language="python", state="idle") >= 2
    assert value("microsandbox_active_sandboxes", language="python", state="busy") == 0
    assert value("microsandbox_memory_usage_bytes", language="python") > 1_000_000
    assert total("microsandbox_sandbox_start_seconds_count") >= 1
    # The zstd client was still connected at scrape time.
    assert value("microsandbox_ws_connections") == 1


async def test_http_rpc_while_draining_is_503_with_each_requests_own_id(server: Server) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        # A running call keeps the drain going while the HTTP requests arrive.
        await client.send(
            {"jsonrpc": "2.0", "id": "slow", "method": "process",
             "params": {"actor_id": "slow", "payload": {"seconds": 2}}}
        )  # fmt: skip
        started = await client.recv()
        assert started["params"]["port"] == "started"
        stopping = asyncio.create_task(server.stop())
        for _ in range(500):  # bounded: until the HTTP port refuses new calls
            status, reply = await post_rpc(
                server, {"jsonrpc": "2.0", "id": 1, "method": "list", "params": {}}
            )
            if status == 503:
                break
            await asyncio.sleep(0.01)
        assert status == 503
        assert isinstance(reply, dict) and reply["id"] == 1
        assert reply["error"]["data"]["kind"] == "unavailable"
        assert "shutting down" in reply["error"]["message"]
        status, batch = await post_rpc(
            server,
            [{"jsonrpc": "2.0", "id": "a", "method": "list"},
             {"jsonrpc": "2.0", "id": 2, "method": "list"}],
        )  # fmt: skip
        assert status == 503 and isinstance(batch, list)
        assert [item["id"] for item in batch] == ["a", 2]
        response = await client.recv(timeout=30)
        assert response["id"] == "slow" and "result" in response  # the running call finished
    finally:
        await client.close()
    await stopping


async def test_unknown_paths_and_methods_on_the_http_port_answer_json(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url(server, "/api/v1/nope")) as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            body = await response.json()
            assert body == {"success": False, "error": "no such endpoint: GET /api/v1/nope"}
        async with session.get(http_url(server, "/api/v1/rpc")) as response:
            assert response.status == 405
            assert response.content_type == "application/json"
            assert "POST" in response.headers["Allow"]
            assert (await response.json())["error"] == "method not allowed: GET /api/v1/rpc"
        # An unknown function's status keeps its own JSON (Reflow's shape).
        async with session.get(http_url(server, "/api/v1/functions/fn-nope")) as response:
            assert response.status == 404 and "state" in await response.json()
