"""Auth on the deploy-then-call path, the ways Reflow can present a token: HTTP Basic
from ``http://user:TOKEN@host`` and a path segment before the function id on the
WebSocket; the existing Bearer header and ``?token=`` still work; everything else gets
401 (JSON on REST, a refused handshake on the WebSocket); no token is ever logged."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.server.clients import ReflowClient

from .conftest import PYTHON_FUNCTION, StartNode, client_for
from .dynasb_client import DeployFailed

TOKEN = "s3cret-deploy-token-9f8e7d"


async def test_tokens_reach_rest_and_websocket_the_ways_reflow_sends_them(
    start_node: StartNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_node(auth={"tokens": ["another-token", TOKEN]}, logging={"level": "debug"})

    # REST: the password of a Basic credential, or a user name alone, is the token.
    reflow = client_for(server, credentials=f"reflow:{TOKEN}@", token=TOKEN)
    function_id = await reflow.deploy("multiplier", "python", PYTHON_FUNCTION)
    assert await client_for(server, credentials=f"{TOKEN}@").status(function_id)

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.http_port}/api/v1/functions"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{url}/{function_id}", headers=bearer) as response:
            assert response.status == 200
        for auth in (None, aiohttp.BasicAuth("reflow", "wrong"), aiohttp.BasicAuth(TOKEN[:-1])):
            for method, path in (
                ("POST", ""),
                ("GET", f"/{function_id}"),
                ("POST", f"/{function_id}/undeploy"),
            ):
                async with session.request(method, url + path, auth=auth, json={}) as response:
                    body = await response.json()
                    assert response.status == 401, (method, path, auth)
                    assert body == {"success": False, "error": "missing or invalid token"}
                    assert "Basic" in response.headers["WWW-Authenticate"]

    # WebSocket: the segment before the id, or the existing ?token=.
    base = f"ws://127.0.0.1:{server.ws_port}"
    for url in (f"{base}/ws/{TOKEN}/{function_id}", f"{base}/ws/{function_id}?token={TOKEN}"):
        async with ReflowClient(url) as actor:
            reply = await actor.process("multiplier", {"input": 3})
        assert reply.outputs is not None and reply.outputs["output"] == 6, reply.raw
    for url in (
        f"{base}/ws/{function_id}",
        f"{base}/ws/wrong-token/{function_id}",
        f"{base}/{TOKEN}/extra/{function_id}x",
        f"{base}/ws/{function_id}/{TOKEN}",
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 401, url
    # A valid token before a malformed function id: the path is wrong, not the token
    # (it used to become an ordinary actor connection, or a 401).
    for url in (f"{base}/ws/{TOKEN}/fn-nope", f"{base}/ws/{TOKEN}/{function_id}x"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 404, url
        assert b"is not a function id" in refused.value.response.body, url

    # The deploy client is refused the way Reflow would report it.
    with pytest.raises(DeployFailed, match="missing or invalid token"):
        await client_for(server, credentials="reflow:nope@").deploy("x", "python", "x = 1")

    await reflow.undeploy(function_id)
    assert (await client_for(server, credentials=f":{TOKEN}@").status(function_id)).state == (
        "removed"
    )
    # What the server logged (the test's own websockets client logs its requests too).
    server_lines = [
        record.getMessage() for record in caplog.records if record.name != "websockets.client"
    ]
    assert server_lines  # the capture works (it caught the request lines before they were capped)
    assert not [line for line in server_lines if TOKEN[:12] in line]


async def test_a_ws_path_that_names_no_function_is_refused_not_served_as_folder_actors(
    start_node: StartNode,
) -> None:
    server = await start_node()
    base = f"ws://127.0.0.1:{server.ws_port}"
    for path in ("/ws/fn-nope", "/ws/", "/ws/anything/else", "/fn-123", "/x/fn-nope?token=t"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base + path):
                pass
        assert refused.value.response.status_code == 404, path
        assert b"is not a function id" in refused.value.response.body, path
    # The ordinary actor connection at the root is untouched.
    async with ReflowClient(base + "/") as client:
        assert (await client.call("list", {})).error is None


async def test_without_tokens_the_api_is_open(
    start_node: StartNode,
) -> None:
    server = await start_node()
    # Credentials Reflow may still send are ignored when auth is off.
    reflow = client_for(server, credentials="user:whatever@", token="anything")
    function_id = await reflow.deploy("multiplier", "python", PYTHON_FUNCTION)
    async with reflow.connect(function_id) as actor:
        assert (await actor.process("m", {"input": 1})).outputs == {"output": 2, "calls": 1}
