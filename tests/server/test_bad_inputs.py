"""A table of bad inputs: each gets its exact error, and the server keeps serving after it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import zstandard
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reflow_microsandbox.server import Server

from .clients import RawClient, ReflowClient
from .conftest import http_url, make_config, write_scripts, ws_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX = 1024 * 1024  # server.max_message_size in these tests
TOKEN = "t0ken-for-tests-0123456789"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    base = tmp_path_factory.mktemp("bad-inputs")
    scripts = write_scripts(base / "scripts")
    outside = base / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("@actor\ndef process(context):\n    return {}\n")
    os.symlink(outside / "evil.py", scripts / "link_out.py")
    config = make_config(scripts, base, None)
    async with Server(config, ephemeral_ports=True) as running:
        assert await running.pool.wait_warmed(60)
        yield running


async def still_serving(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("echo", {"data": "still here"})
    assert reply.outputs == {"out": "still here"}


def request(method: str, params: Any, id_: Any = 1) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})


@dataclass(frozen=True)
class ErrorCase:
    frame: str | bytes
    code: int
    id: Any
    mentions: str


ERROR_CASES = {
    "bad json": ErrorCase("{not json", -32700, None, "parse error"),
    "truncated json": ErrorCase('{"jsonrpc":"2.0","id":1', -32700, None, "parse error"),
    "not an object": ErrorCase("42", -32600, None, "invalid request"),
    "empty batch": ErrorCase("[]", -32600, None, "empty batch"),
    "missing jsonrpc": ErrorCase('{"id":"a","method":"list"}', -32600, "a", "jsonrpc"),
    "unknown method": ErrorCase(request("explode", {}), -32601, 1, "explode"),
    "actor_id not a string": ErrorCase(request("process", {"actor_id": 5}), -32602, 1, "actor_id"),
    "actor_id missing": ErrorCase(request("process", {"payload": {}}), -32602, 1, "actor_id"),
    "payload not an object": ErrorCase(
        request("process", {"actor_id": "echo", "payload": "x"}), -32602, 1, "payload"
    ),
    "timestamp not an integer": ErrorCase(
        request("process", {"actor_id": "echo", "timestamp": "now"}), -32602, 1, "timestamp"
    ),
    "state namespace not a string": ErrorCase(
        request("process", {"actor_id": "echo", "state": {"namespace": 3}}),
        -32602,
        1,
        "state.namespace",
    ),
    "positional params": ErrorCase(request("process", ["echo"]), -32602, 1, "params"),
    # A number beyond a double decodes to infinity: the client's fault, named by field
    # (it used to reach the sandbox and come back as the script's -32005).
    "a number beyond a double": ErrorCase(
        '{"jsonrpc":"2.0","id":7,"method":"process",'
        '"params":{"actor_id":"echo","payload":{"value":1e400}}}',
        -32602,
        7,
        "payload.value: the number is outside the range of a 64-bit float",
    ),
    "a long integer literal as a float in a list": ErrorCase(
        '{"jsonrpc":"2.0","id":"n","method":"process",'
        '"params":{"actor_id":"echo","payload":{"data":[1, -' + "9" * 400 + ".0]}}}",
        -32602,
        "n",
        "payload.data.1",
    ),
    # An integer literal beyond a double (Reflow's serde_json cannot read one back), and
    # one over Python's 4,300-digit int limit (its parse error used to advise the client
    # to call sys.set_int_max_str_digits): both the client's fault, named by field.
    "an integer literal beyond a double": ErrorCase(
        '{"jsonrpc":"2.0","id":8,"method":"process",'
        '"params":{"actor_id":"echo","payload":{"value":1' + "0" * 400 + "}}}",
        -32602,
        8,
        "payload.value: the number is outside the range of a 64-bit float",
    ),
    "an integer literal over 4,300 digits": ErrorCase(
        '{"jsonrpc":"2.0","id":9,"method":"process",'
        '"params":{"actor_id":"echo","payload":{"data":[-' + "9" * 5000 + "]}}}",
        -32602,
        9,
        "payload.data.0: the number is outside the range of a 64-bit float",
    ),
    # 300 digits and a one-digit exponent: no three-digit exponent, no 309 digits in a
    # row, still beyond a double (the pre-check used to miss it: the script got inf).
    "a long mantissa with a short exponent": ErrorCase(
        '{"jsonrpc":"2.0","id":10,"method":"process",'
        '"params":{"actor_id":"echo","payload":{"m":' + "9" * 300 + "e9}}}",
        -32602,
        10,
        "payload.m: the number is outside the range of a 64-bit float",
    ),
    # An id beyond a double decodes to infinity, which no JSON reply can echo: it used
    # to cost the frame its answer over WebSocket (a batch lost all its answers) and
    # gave HTTP clients aiohttp's plain-text 500.
    "an id beyond a double": ErrorCase(
        '{"jsonrpc":"2.0","id":1e400,"method":"list"}', -32600, None, "id must be"
    ),
    "an integer id beyond a double": ErrorCase(
        '{"jsonrpc":"2.0","id":-1' + "0" * 400 + ',"method":"list"}', -32600, None, "id must be"
    ),
    "unknown actor": ErrorCase(
        request("process", {"actor_id": "ghost"}, "u"), -32010, "u", "ghost"
    ),
    "corrupt zstd frame": ErrorCase(b"\x28\xb5\x2f\xfd" + b"garbage" * 10, -32700, None, "zstd"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=list(ERROR_CASES))
async def test_bad_frame_gets_its_exact_error_and_the_server_keeps_serving(
    server: Server, case: ErrorCase
) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(case.frame)
        reply = await client.recv()
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] == case.id and type(reply["id"]) is type(case.id)
        assert reply["error"]["code"] == case.code
        assert case.mentions in reply["error"]["message"]
        assert "result" not in reply
        # The same connection still works after the error.
        response, _ = await client.request("list", {}, id_="after")
        assert "actors" in response["result"]
    finally:
        await client.close()
    await still_serving(server)


def zstd_bomb(size: int, *, declare_size: bool) -> bytes:
    compressor = zstandard.ZstdCompressor(level=19, write_content_size=declare_size)
    if declare_size:
        return compressor.compress(b"\0" * size)
    chunk = compressor.compressobj()
    return chunk.compress(b"\0" * size) + chunk.flush()


CLOSE_CASES: dict[str, tuple[dict[str, Any], str | bytes, int]] = {
    "oversized text frame": ({"compression": None}, "[" + " " * MAX + "]", 1009),
    "oversized binary frame": ({"compression": None}, b"\0" * (MAX + 1), 1009),
    "deflate bomb": ({}, json.dumps({"pad": "a" * (4 * MAX)}), 1009),
    "zstd bomb declaring its size": ({}, zstd_bomb(64 * MAX, declare_size=True), 1009),
    "zstd bomb hiding its size": ({}, zstd_bomb(64 * MAX, declare_size=False), 1009),
}


@pytest.mark.parametrize(("options", "frame", "code"), CLOSE_CASES.values(), ids=list(CLOSE_CASES))
async def test_oversized_and_bomb_messages_close_1009_and_the_server_keeps_serving(
    server: Server, options: dict[str, Any], frame: str | bytes, code: int
) -> None:
    async with connect(ws_url(server), max_size=None, **options) as conn:
        if isinstance(frame, bytes) and frame[:4] == b"\x28\xb5\x2f\xfd":
            assert len(frame) < MAX  # small on the wire, huge once decompressed
        await conn.send(frame)
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        assert conn.close_code == code
    await still_serving(server)


async def test_invalid_utf8_in_a_text_frame_closes_1007_and_the_server_keeps_serving(
    server: Server,
) -> None:
    async with connect(ws_url(server), compression=None) as conn:
        await conn.send(b'{"jsonrpc":"2.0","id":1,"method":"list","x":"\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        assert conn.close_code == 1007
    await still_serving(server)


@pytest.mark.parametrize(
    ("file_path", "reason"),
    [
        ("../outside/evil.py", "outside the script folders"),
        ("../../../../../../etc/passwd", "outside the script folders"),
        ("/etc/passwd", "outside the script folders"),
        ("link_out.py", "outside"),
        ("", "invalid params"),
    ],
)
async def test_load_refuses_paths_outside_the_script_folders(
    server: Server, file_path: str, reason: str
) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        response, _ = await client.request("load", {"file_path": file_path})
    finally:
        await client.close()
    if reason == "invalid params":
        assert response["error"]["code"] == -32602
        assert "file_path" in response["error"]["message"]
    else:
        assert response["result"]["success"] is False
        assert reason in response["result"]["error"]
    assert "evil" not in server.registry.names()
    await still_serving(server)


# -- tokens ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    base = tmp_path_factory.mktemp("tokens")
    config = make_config(
        write_scripts(base / "scripts"), base, None, auth={"tokens": ["other-token", TOKEN]}
    )
    async with Server(config, ephemeral_ports=True) as running:
        assert await running.pool.wait_warmed(60)
        yield running


@pytest.mark.parametrize(
    ("query", "headers"),
    [("", {}), ("token=wrong", {}), ("token=", {}), ("", {"Authorization": "Bearer wrong"}),
     ("", {"Authorization": f"Basic {TOKEN}"})],
)  # fmt: skip
async def test_websocket_without_a_valid_token_is_refused_with_401(
    guarded: Server, query: str, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(guarded, query), additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize(
    ("query", "headers"),
    [(f"token={TOKEN}", {}), ("", {"Authorization": f"Bearer {TOKEN}"})],
)
async def test_websocket_with_a_valid_token_in_the_query_or_header_is_served(
    guarded: Server, query: str, headers: dict[str, str]
) -> None:
    async with connect(ws_url(guarded, query), additional_headers=headers) as conn:
        await conn.send(request("process", {"actor_id": "echo", "payload": {"data": 3}}))
        reply = json.loads(await conn.recv())
    assert reply["result"] == {"outputs": {"out": 3}}


async def test_http_rpc_needs_the_bearer_token_but_health_and_ready_stay_open(
    guarded: Server,
) -> None:
    body = request("list", {})
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with session.post(
                http_url(guarded, "/api/v1/rpc"), data=body, headers=headers
            ) as r:
                assert r.status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(http_url(guarded, "/api/v1/rpc"), data=body, headers=good) as r:
            assert r.status == 200
            assert "actors" in (await r.json())["result"]
        # A token in the URL is for Reflow's WebSocket only, not for HTTP.
        async with session.post(http_url(guarded, f"/api/v1/rpc?token={TOKEN}"), data=body) as r:
            assert r.status == 401
        async with session.get(http_url(guarded, "/health")) as r:
            assert r.status == 200
        async with session.get(http_url(guarded, "/ready")) as r:
            assert r.status == 200


async def test_http_body_over_the_size_cap_is_refused_with_413(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        big = request("process", {"actor_id": "echo", "payload": {"data": "y" * (MAX + 10)}})
        async with session.post(http_url(server, "/api/v1/rpc"), data=big) as response:
            assert response.status == 413
    await still_serving(server)


async def test_a_batch_with_an_id_beyond_a_double_answers_every_member(server: Server) -> None:
    frame = (
        '[{"jsonrpc":"2.0","id":-1e999,"method":"list"},'
        '{"jsonrpc":"2.0","id":2,"method":"list","params":{}}]'
    )
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(frame)
        replies = await client.recv()
    finally:
        await client.close()
    assert isinstance(replies, list) and len(replies) == 2
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == -32600
    assert replies[1]["id"] == 2 and "actors" in replies[1]["result"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(http_url(server, "/api/v1/rpc"), data=frame) as response,
    ):
        assert response.status == 200
        assert [r.get("id") for r in await response.json()] == [None, 2]


@pytest.mark.parametrize("path", ["/api/v1/rpc", "/api/v1/functions"])
async def test_a_body_that_cannot_be_decompressed_gets_a_json_400(
    server: Server, path: str
) -> None:
    """``Content-Encoding: deflate`` over bytes that are not deflate: aiohttp fails the
    read, which used to reach the client as its plain-text 500."""
    headers = {"Content-Encoding": "deflate", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(http_url(server, path), data=b"not deflate at all", headers=headers) as r,
    ):
        assert r.status == 400
        assert r.content_type == "application/json"
        body = await r.json()
    if path == "/api/v1/rpc":
        assert body["id"] is None and body["error"]["code"] == -32700
        message = body["error"]["message"]
    else:
        assert body["success"] is False
        message = body["error"]
    assert "content-encoding: deflate" in message
    await still_serving(server)
