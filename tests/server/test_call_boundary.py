"""The call boundary through a real server (../shared/cases/call-boundary/, as clients see it).

01: what one client's call leaves running never reaches another client's call (over
WebSocket pushes, nor merged into an HTTP result). 03: an exception in a Node timer
fails its call at once and the next call is answered from a fresh sandbox, not after a
timeout. 04: a value UTF-8 cannot carry gets a JSON-RPC error on a connection that stays
open, and over HTTP a JSON-RPC body. 14: a request nested past the limit gets an error
naming it, the connection and its other calls carry on.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reflow_microsandbox.jsonlimits import MAX_MESSAGE_DEPTH
from reflow_microsandbox.server import Server

from .clients import RawClient, ReflowClient
from .conftest import StartServer, http_url, make_config, ws_url

LATE_THREAD = """
import os, threading, time

@actor({"component": "late_thread", "inports": ["mode"], "outports": ["done"]})
def process(context):
    mode = context.get_input("mode", "quiet")
    if mode == "spawn":
        def later():
            time.sleep(0.3)
            print("LEAK-LOG written by an earlier call's thread")
            context.send_output("leak", "LEAK-OUTPUT sent by an earlier call's thread")
            open("/tmp/leaked", "w").close()
        threading.Thread(target=later, daemon=True).start()
    if mode == "wait":  # runs while the earlier call's thread writes
        deadline = time.monotonic() + 10
        while not os.path.exists("/tmp/leaked") and time.monotonic() < deadline:
            time.sleep(0.01)
    return {"done": mode}
"""

TIMER_THROW = """
const metadata = {"component": "timer_throw", "inports": ["mode"], "outports": ["done"]};

async function process(context) {
  const mode = context.getInput("mode", "ok");
  if (mode === "throw") {
    await new Promise(() => setTimeout(() => {
      throw new Error("thrown inside a timer callback");
    }, 20));
  }
  if (mode === "later") {
    setTimeout(() => { throw new Error("thrown after the call answered"); }, 30);
  }
  return { done: mode };
}
module.exports = { metadata, process };
"""

SURROGATE = """
@actor({"component": "surrogate_return", "inports": [], "outports": ["text"]})
def process(context):
    return {"text": "abc" + chr(0xD800) + "def"}
"""

SLOW = """
import time

@actor(name="sleepy")
def process(context):
    time.sleep(context.get_input("seconds", 0.5))
    return {"slept": True}
"""


@pytest.fixture
def boundary_scripts(scripts: Path) -> Path:
    (scripts / "computed.js").write_text("const metadata = {component: NAME};\n")
    (scripts / "late_thread.py").write_text(LATE_THREAD)
    (scripts / "timer_throw.js").write_text(TIMER_THROW)
    (scripts / "surrogate_return.py").write_text(SURROGATE)
    (scripts / "sleepy.py").write_text(SLOW)
    return scripts


@pytest.fixture
async def server(
    start_server: StartServer, boundary_scripts: Path, tmp_path: Path, redis_url: str
) -> Server:
    config = make_config(
        boundary_scripts,
        tmp_path,
        redis_url,
        sandbox={
            "call_timeout": 5.0,
            "pool": {"max_per_actor": 1, "nodejs": {"min_instances": 1}},
        },
    )
    return await start_server(config)


async def rpc_http(server: Server, body: bytes | str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        http_url(server, "/api/v1/rpc"), data=body
    ) as response:
        return response.status, response.content_type, await response.json()


async def wait_for_metric(server: Server, line: str, timeout: float = 10.0) -> None:
    """Wait until the exposition holds ``line`` (sandboxes are killed in the background)."""
    deadline = time.monotonic() + timeout
    while line not in server.metrics.exposition().decode():
        assert time.monotonic() < deadline, f"no {line!r} in the metrics"
        await asyncio.sleep(0.02)


def process_frame(actor: str, payload: dict[str, Any], id_: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "process",
        "params": {"actor_id": actor, "payload": payload},
        "id": id_,
    }


async def test_case_01_a_thread_of_client_a_never_reaches_client_b(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as a, ReflowClient(ws_url(server)) as b:
        first = await a.process("late_thread", {"mode": "spawn"})
        assert first.outputs == {"done": "spawn"}
        second = await b.process("late_thread", {"mode": "wait"})
        assert second.outputs == {"done": "wait"}
        assert second.pushes == [] and second.logs == []
        third = await b.process("late_thread", {"mode": "quiet"})
        assert third.outputs == {"done": "quiet"} and third.pushes == [] and third.logs == []
    assert a.pushes == [] and a.logs == []
    await wait_for_metric(server, 'microsandbox_stray_frames_total{language="python"}')


async def test_case_01_over_http_nothing_is_merged_into_another_calls_result(
    server: Server,
) -> None:
    frame = json.dumps(process_frame("late_thread", {"mode": "spawn"}, 1))
    assert (await rpc_http(server, frame))[2]["result"] == {"outputs": {"done": "spawn"}}
    frame = json.dumps(process_frame("late_thread", {"mode": "wait"}, 2))
    status, _, body = await rpc_http(server, frame)
    assert status == 200
    assert body == {"jsonrpc": "2.0", "id": 2, "result": {"outputs": {"done": "wait"}}}


async def test_case_03_the_call_after_a_timer_exception_is_answered_at_once(
    server: Server,
) -> None:
    async with ReflowClient(ws_url(server)) as client:
        failed = await client.process("timer_throw", {"mode": "throw"})
        assert failed.error is not None
        assert failed.error["code"] == -32005
        assert "thrown inside a timer callback" in failed.error["message"]
        started = time.monotonic()
        ok = await client.process("timer_throw", {"mode": "ok"})
        elapsed = time.monotonic() - started
    assert ok.outputs == {"done": "ok"}
    # Not charged the 5 s call_timeout: a fresh sandbox served it (a warm one, loaded).
    assert elapsed < 4.0, f"the healthy call took {elapsed:.1f} s"
    await wait_for_metric(
        server, 'microsandbox_sandboxes_killed_total{language="nodejs",reason="retired"} 1.0'
    )


async def test_a_sandbox_that_failed_between_calls_is_replaced_before_the_next_one(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    def bound() -> set[str]:
        return {
            info.sandbox_id for info in server.pool.snapshot() if info.actor_key is not None
        }

    async with ReflowClient(ws_url(server)) as client:
        assert (await client.process("timer_throw", {"mode": "later"})).outputs == {
            "done": "later"
        }
        first = bound()
        # The server log says when the exception after the call was seen.
        deadline = time.monotonic() + 10
        while "will be replaced: an uncaught exception outside its call" not in caplog.text:
            assert time.monotonic() < deadline, "the exception after the call went unseen"
            await asyncio.sleep(0.01)
        assert "dropped uncaught of call" in caplog.text
        assert "thrown after the call answered" in caplog.text
        started = time.monotonic()
        reply = await client.process("timer_throw", {"mode": "ok"})
        assert reply.outputs == {"done": "ok"} and reply.error is None
        assert time.monotonic() - started < 4.0
        assert bound().isdisjoint(first)  # another sandbox served it


async def test_case_04_a_lone_surrogate_gets_an_error_and_the_connection_stays_open(
    server: Server,
) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        # A slow call in flight on the same connection keeps its reply.
        await client.send(process_frame("sleepy", {"seconds": 0.5}, "slow"))
        await client.send(process_frame("surrogate_return", {}, "bad"))
        answers = {}
        while len(answers) < 2:
            message = await client.recv(15)
            if "id" in message:
                answers[message["id"]] = message
        error = answers["bad"]["error"]
        assert error["code"] == -32005 and error["data"]["kind"] == "script_error"
        assert "lone surrogate (U+D800)" in error["message"]
        assert answers["slow"]["result"] == {"outputs": {"slept": True}}
        reply, _ = await client.request("list", {}, id_="after")
        assert "surrogate_return" in reply["result"]["actors"]
        [problem] = reply["result"]["problems"]  # a refused script is named, with why
        assert problem.startswith("computed.js: `const metadata` must be an object literal")
    finally:
        await client.close()
    status, content_type, body = await rpc_http(
        server, json.dumps(process_frame("surrogate_return", {}, 7))
    )
    assert (status, content_type) == (200, "application/json")
    assert body["id"] == 7 and body["error"]["data"]["kind"] == "script_error"


async def test_a_lone_surrogate_in_a_request_is_refused_with_its_id(server: Server) -> None:
    frame = '{"jsonrpc":"2.0","method":"process","params":{"actor_id":"echo",' \
        '"payload":{"data":"x\\ud800"}},"id":5}'
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(frame)
        reply = await client.recv(10)
        assert reply["id"] == 5 and reply["error"]["code"] == -32600
        assert "lone surrogate (U+D800)" in reply["error"]["message"]
        # A valid pair is fine.
        pair = frame.replace("\\ud800", "\\ud83d\\ude00").replace('"id":5', '"id":6')
        await client.send(pair)
        assert (await client.recv(10))["result"] == {"outputs": {"out": "x\U0001f600"}}
    finally:
        await client.close()
    status, _, body = await rpc_http(server, frame)
    assert status == 200 and body["error"]["code"] == -32600


def deep_frame(depth: int, id_: Any = 1) -> str:
    return (
        '{"jsonrpc":"2.0","method":"process","params":{"actor_id":"echo","payload":{"data":'
        + "[" * depth + "]" * depth + f'}}}},"id":{json.dumps(id_)}}}'
    )


@pytest.mark.parametrize("depth", [950, 980, 995, 1500, 5000, 100_000])
async def test_case_14_a_request_nested_past_the_limit_gets_an_error_naming_it(
    server: Server, depth: int
) -> None:
    client = await RawClient.open(ws_url(server))
    try:
        await client.send(process_frame("sleepy", {"seconds": 0.3}, "slow"))
        await client.send(deep_frame(depth))
        answers: dict[Any, Any] = {}
        while len(answers) < 2:
            message = await client.recv(15)
            answers[message.get("id")] = message
        error = answers[None]["error"]
        assert error["code"] == -32700
        assert f"deeper than {MAX_MESSAGE_DEPTH} levels" in error["message"]
        assert answers["slow"]["result"] == {"outputs": {"slept": True}}
    finally:
        await client.close()
    status, content_type, body = await rpc_http(server, deep_frame(depth))
    assert (status, content_type) == (200, "application/json")
    assert body["error"]["code"] == -32700


async def test_a_request_at_the_limit_is_served_and_an_echo_past_the_value_limit_is_refused(
    server: Server,
) -> None:
    async with ReflowClient(ws_url(server)) as client:
        ok = await client.call("process", {"actor_id": "echo", "payload": {"data": [[[1]]]}})
        assert ok.outputs == {"out": [[[1]]]}
    client2 = await RawClient.open(ws_url(server))
    try:
        # 124 levels of payload: the request is 128 deep, within the limit; echoed back
        # it is deeper than a value may be (100), and the script error says so.
        await client2.send(deep_frame(MAX_MESSAGE_DEPTH - 4, "edge"))
        reply = await client2.recv(15)
        assert reply["id"] == "edge"
        assert reply["error"]["data"]["kind"] == "script_error"
        assert "nests deeper than 100 levels" in reply["error"]["message"]
    finally:
        await client2.close()


async def test_http_answers_an_oversized_body_with_json_rpc(server: Server) -> None:
    body = json.dumps(process_frame("echo", {"data": "x" * (2 * 1024 * 1024)}, 1))
    status, content_type, answer = await rpc_http(server, body)
    assert (status, content_type) == (413, "application/json")
    assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == -32600


async def test_a_state_value_over_its_cap_is_a_state_error_naming_the_limit(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    # A value larger than the call's output budget used to fail as -32004 "outputs and
    # logs exceeded" though nothing was output.
    (scripts / "big_state.py").write_text(
        "@actor(name='big_state')\n"
        "async def process(context):\n"
        "    await context.set_state('big', 'x' * context.get_input('size'))\n"
        "    return {'ok': True}\n"
    )
    (scripts / "big_state_js.js").write_text(
        "module.exports = {process: async (context) => {\n"
        "  await context.setState('big', 'x'.repeat(context.getInput('size')));\n"
        "  return {ok: true};\n"
        "}};\n"
    )
    config = make_config(
        scripts, tmp_path, redis_url,
        sandbox={"max_output_bytes": 256 * 1024,
                 "pool": {"nodejs": {"min_instances": 1, "max_instances": 1}}},
    )  # fmt: skip
    server = await start_server(config)
    async with ReflowClient(ws_url(server)) as client:
        for actor in ("big_state", "big_state_js"):
            refused = await client.process(actor, {"size": 300_000})
            assert refused.error is not None, actor
            assert refused.error["data"]["kind"] == "state_error", (actor, refused.error)
            message = refused.error["message"] + json.dumps(refused.error["data"])
            assert "300002 bytes as JSON" in message and "sandbox.max_output_bytes" in message
            limit = 256 * 1024 - 64 * 1024
            assert f"more than the {limit} a state value may be" in message, message
            # Under the cap the same call succeeds.
            assert (await client.process(actor, {"size": 1000})).outputs == {"ok": True}, actor
