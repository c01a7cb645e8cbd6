"""Every deploy the server cannot serve gets Reflow's JSON shape with ``success: false``
and an error that says what is wrong; nothing is stored and the node serves on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.redis_server import RedisServer

from .conftest import PYTHON_FUNCTION, StartNode, client_for

DEPLOY_FIELDS = {"success", "function_id", "vm_id", "endpoint", "deployment_time_ms", "error"}


def _body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "bad",
        "runtime": "python",
        "code": PYTHON_FUNCTION,
        "handler": "bad",
        "timeout_seconds": 300,
        "dependencies": None,
    }
    body.update(fields)
    return body


PYTHON_BROKEN = "def helper():\n    return 1\n\ndef process(context)\n    return {}\n"
NODE_BROKEN = "function process(context) {\n  return {out: };\n}\nmodule.exports = {process};\n"

# (what is wrong, raw body, expected HTTP status, words the error must contain)
CASES: list[tuple[str, bytes | dict[str, Any], int, list[str]]] = [
    ("not JSON", b"{name: 'x'", 400, ["not JSON"]),
    ("a JSON array", b"[1, 2]", 400, ["JSON object"]),
    ("a body nested 30,000 deep",
     b'{"name": "deep", "code": "x", "extra": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400,
     ["nests deeper than 128 levels (the limit)"]),
    ("no code", {k: v for k, v in _body().items() if k != "code"}, 400, ["code", "required"]),
    ("timeout as a string", _body(timeout_seconds="300"), 400, ["timeout_seconds"]),
    ("a negative timeout", _body(timeout_seconds=-1), 400, ["timeout_seconds"]),
    ("dependencies as a list", _body(dependencies=["six"]), 400, ["dependencies"]),
    ("empty code", _body(code="   \n"), 400, ["code is empty"]),
    ("unknown runtime", _body(runtime="ruby"), 422,
     ["unknown runtime 'ruby'", "python, nodejs"]),
    ("Python syntax error", _body(name="broken_py", code=PYTHON_BROKEN), 422,
     ['File "broken_py.py", line 4', "def process(context)", "SyntaxError: expected ':'"]),
    ("JavaScript syntax error", _body(name="broken_js", runtime="nodejs", code=NODE_BROKEN), 422,
     ["broken_js.js:2", "return {out: };", "SyntaxError: Unexpected token '}'"]),
    ("a NUL byte in Python", _body(code="def process(c):\n    return 1\x00\n"), 422,
     ["null bytes"]),
    ("code over the size cap", _body(code="# " + "x" * 5000 + "\n" + PYTHON_FUNCTION), 413,
     ["bytes, more than the 4096", "functions.max_code_bytes"]),
    ("a git URL as a Python package", _body(dependencies={"git+https://example.org/x": "*"}),
     422, ["not a Python package name"]),
    ("pip options as a version", _body(dependencies={"six": "--index-url=http://x"}), 422,
     ["version", "six"]),
    ("a file: spec for npm", _body(runtime="nodejs", code="module.exports = () => 1;",
                                   dependencies={"left-pad": "file:../../etc"}), 422,
     ["not a semver range"]),
    ("a path as an npm name", _body(runtime="nodejs", code="module.exports = () => 1;",
                                    dependencies={"../x": "*"}), 422,
     ["not an npm package name"]),
    ("too many dependencies", _body(dependencies={f"p{i}": "*" for i in range(5)}), 422,
     ["at most 3"]),
    # Code that compiles but defines no actor: the runner would refuse its first call.
    ("Python without an actor", _body(code="x = 1\n"), 422,
     ["defines no actor", "@actor", "process(context)"]),
    ("Python with a handler but no process", _body(code="def handler(c):\n    return {}\n"),
     422, ["defines no actor"]),
    ("JavaScript without an actor", _body(runtime="nodejs", code="const x = 1;\n"), 422,
     ["defines no actor", "module.exports"]),
    ("JavaScript exporting no function", _body(runtime="nodejs",
                                               code="module.exports = {handler: 1};\n"), 422,
     ["defines no actor"]),
    ("JavaScript whose body throws", _body(runtime="nodejs",
                                           code="throw new Error('boom at load');\n"), 422,
     ["boom at load"]),
]  # fmt: skip


async def test_every_bad_deploy_gets_success_false_and_a_clear_error(
    start_node: StartNode,
) -> None:
    server = await start_node(functions={"max_code_bytes": 4096, "max_dependencies": 3})
    url = f"http://127.0.0.1:{server.http_port}/api/v1/functions"
    problems = []
    async with aiohttp.ClientSession() as session:
        for what, body, status, words in CASES:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"}
            async with session.post(url, data=data, headers=headers) as response:
                answer = await response.json(content_type=None)
                got = response.status
            if got != status or set(answer) != DEPLOY_FIELDS or answer["success"] is not False:
                problems.append(f"{what}: HTTP {got}, {answer}")
                continue
            missing = [word for word in words if word not in (answer["error"] or "")]
            if missing or answer["function_id"] is not None:
                problems.append(f"{what}: error {answer['error']!r} lacks {missing}")
        # A body larger than any deploy may be is refused before it is parsed.
        huge = b'{"code": "' + b"x" * (6 * 4096 + 70_000) + b'"}'
        async with session.post(url, data=huge) as response:
            answer = await response.json(content_type=None)
            assert response.status == 413 and answer["success"] is False
            assert "larger than" in answer["error"]
    assert not problems, "\n".join(problems)

    # Nothing was stored, and the node deploys and runs a good function.
    assert await server.functions._store.count() == 0
    reflow = client_for(server)
    function_id = await reflow.deploy("fine", "python", PYTHON_FUNCTION)
    async with reflow.connect(function_id) as actor:
        assert (await actor.process("fine", {"input": 2})).outputs == {"output": 4, "calls": 1}


async def test_actors_defined_in_less_common_ways_still_deploy_and_run(
    start_node: StartNode,
) -> None:
    # The no-actor check refuses only what the runner would refuse at its first call.
    server = await start_node()
    reflow = client_for(server)
    forms = [
        ("lambda_py", "python", "process = lambda context: {'form': 'lambda'}\n", "lambda"),
        ("dynamic_py", "python",
         "def _p(context):\n    return {'form': 'dynamic'}\n\nglobals()['pro' + 'cess'] = _p\n",
         "dynamic"),
        ("exports_run", "nodejs", "exports.run = async () => ({form: 'exports.run'});\n",
         "exports.run"),
        ("named_js", "nodejs", "function process(context) { return {form: 'named'}; }\n",
         "named"),
    ]  # fmt: skip
    for name, runtime, code, form in forms:
        function_id = await reflow.deploy(name, runtime, code)
        async with reflow.connect(function_id) as actor:
            reply = await actor.process(name, {})
        assert reply.error is None and reply.outputs == {"form": form}, (name, reply.raw)


async def test_a_server_that_installs_no_dependencies_refuses_them_clearly(
    start_node: StartNode,
) -> None:
    server = await start_node(functions={"allow_dependencies": False})
    status, body = await client_for(server).deploy_raw(
        "needs_six", "python", PYTHON_FUNCTION, dependencies={"six": "*"}
    )
    assert status == 422 and body["success"] is False
    assert "functions.allow_dependencies: false" in body["error"]
    cache = Path(server.config.functions.dependency_cache)
    assert not await asyncio.to_thread(cache.exists)  # no installer ran


async def test_a_deploy_that_arrives_while_the_node_drains_is_refused(
    start_node: StartNode,
) -> None:
    server = await start_node()
    reflow = client_for(server)
    # A call that keeps the drain going while the deploy arrives.
    slow = await reflow.deploy("slow", "python", "import time\ndef process(c):\n  time.sleep(3)\n")
    async with reflow.connect(slow) as actor:
        call = asyncio.create_task(actor.process("slow", {}))
        for _ in range(300):  # bounded: until the call is running
            if server.dispatcher.in_flight:
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.stop())
        for _ in range(300):  # bounded: until the node drains
            if server.functions.draining:
                break
            await asyncio.sleep(0.01)
        status, answer = await reflow.deploy_raw("late", "python", PYTHON_FUNCTION)
        ready_status, _ = await reflow._request("GET", "/ready")
        assert (await call).outputs == {}  # the running call finished
    await stopping
    assert status == 503 and set(answer) == DEPLOY_FIELDS
    assert answer["success"] is False and "shutting down" in answer["error"]
    assert ready_status == 503


async def test_with_the_store_down_deploys_status_and_calls_fail_clearly_then_recover(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    server = await start_node()
    reflow = client_for(server)
    function_id = await reflow.deploy("fine", "python", PYTHON_FUNCTION)
    redis_server.stop()
    try:
        status, answer = await reflow.deploy_raw("other", "python", PYTHON_FUNCTION)
        assert status == 503 and set(answer) == DEPLOY_FIELDS and answer["success"] is False
        assert "function store failed" in answer["error"] and "redis" in answer["error"]
        # Reflow keeps polling through "starting" rather than giving up.
        assert (await reflow.status(function_id)).state == "starting"
        async with reflow.connect(function_id) as actor:
            reply = await actor.process("fine", {"input": 1})
        assert reply.error is not None and reply.error["data"]["kind"] == "state_error"
    finally:
        redis_server.start()  # empty again: this test's Redis keeps no data
    again = await reflow.deploy("fine", "python", PYTHON_FUNCTION)
    async with reflow.connect(again) as actor:
        reply = await actor.process("fine", {"input": 1})
    assert reply.outputs == {"output": 2, "calls": 1}
