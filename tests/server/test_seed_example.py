"""The seed guide's example actor, verbatim, over real WebSockets with Redis state."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis
import zstandard
from websockets.asyncio.client import connect

from reflow_microsandbox.config import Config
from reflow_microsandbox.server import Server

from .clients import RawClient, ReflowClient
from .conftest import StartServer, make_config, ws_url

BIG = "x" * 10000


async def test_seed_example_outputs_arrive_and_counter_counts_calls(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        first = await client.process("test_actor")
        second = await client.process("test_actor")
    assert first.error is None, first.error
    assert first.outputs == {"status": "success", "counter": 0}
    assert second.outputs == {"status": "success", "counter": 1}
    # The 10 KB push arrives as an output notification before the response,
    # and is not repeated in result.outputs.
    assert [(p.port, p.data, p.actor_id) for p in first.pushes] == [("test", BIG, "test_actor")]
    assert "test" not in (first.outputs or {})


async def test_state_is_plain_json_under_reflows_key_layout(server: Server, redis_url: str) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("test_actor")
    assert reply.error is None
    redis = aioredis.from_url(redis_url)
    try:
        assert await redis.get("default:test_actor:counter") == b"1"
    finally:
        await redis.aclose()


async def test_10kb_push_is_zstd_binary_for_an_opted_in_client_and_text_otherwise(
    server: Server,
) -> None:
    zstd_client = await RawClient.open(ws_url(server, "compression=zstd"))
    text_client = await RawClient.open(ws_url(server))
    try:
        for client in (zstd_client, text_client):
            await client.send(
                {"jsonrpc": "2.0", "id": 1, "method": "process",
                 "params": {"actor_id": "test_actor"}}
            )  # fmt: skip
        push_frame = await zstd_client.recv_frame()
        response_frame = await zstd_client.recv_frame()
        assert isinstance(push_frame, bytes) and push_frame[:4] == b"\x28\xb5\x2f\xfd"
        assert len(push_frame) < 1000  # 10 KB of "x" compresses to almost nothing
        push = json.loads(zstandard.ZstdDecompressor().decompress(push_frame))
        assert push["method"] == "output" and push["params"]["data"] == BIG
        # The small response stays a text frame even for a zstd client.
        assert isinstance(response_frame, str)
        assert json.loads(response_frame)["result"]["outputs"]["status"] == "success"

        text_push = await text_client.recv_frame()
        text_response = await text_client.recv_frame()
        assert isinstance(text_push, str) and json.loads(text_push)["params"]["data"] == BIG
        assert isinstance(text_response, str)
    finally:
        await zstd_client.close()
        await text_client.close()


async def test_client_sending_a_zstd_frame_opts_in_to_zstd_replies(server: Server) -> None:
    request = json.dumps(
        {"jsonrpc": "2.0", "id": "z", "method": "process", "params": {"actor_id": "test_actor"}}
    ).encode()
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(zstandard.ZstdCompressor().compress(request))
        push_frame = await client.recv_frame()
        assert isinstance(push_frame, bytes)
        response = await client.recv()
        assert response["id"] == "z" and "error" not in response
    finally:
        await client.close()


async def test_permessage_deflate_is_negotiated_for_clients_that_offer_it(server: Server) -> None:
    async with connect(ws_url(server)) as conn:
        extensions = (
            conn.response.headers.get("Sec-WebSocket-Extensions", "") if conn.response else ""
        )
        assert "permessage-deflate" in extensions
    async with connect(ws_url(server), compression=None) as conn:
        assert conn.response is not None
        assert "Sec-WebSocket-Extensions" not in conn.response.headers


async def test_counter_continues_across_a_server_restart(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    config = make_config(scripts, tmp_path, redis_url)
    first = await start_server(config)
    async with ReflowClient(ws_url(first)) as client:
        for expected in range(3):
            reply = await client.process("test_actor")
            assert reply.outputs == {"status": "success", "counter": expected}
    await first.stop()
    second = await start_server(config)
    async with ReflowClient(ws_url(second)) as client:
        reply = await client.process("test_actor")
    assert reply.outputs == {"status": "success", "counter": 3}


async def test_counter_continues_across_a_restart_on_embedded_sqlite(
    start_server: StartServer, scripts: Path, tmp_path: Path
) -> None:
    config: Config = make_config(scripts, tmp_path, None)
    first = await start_server(config)
    async with ReflowClient(ws_url(first)) as client:
        assert (await client.process("test_actor")).outputs == {"status": "success", "counter": 0}
        assert (await client.process("test_actor")).outputs == {"status": "success", "counter": 1}
    await first.stop()
    second = await start_server(config)
    async with ReflowClient(ws_url(second)) as client:
        assert (await client.process("test_actor")).outputs == {"status": "success", "counter": 2}
