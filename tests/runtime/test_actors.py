"""What a script author sees: the example scripts, the @actor forms, the context API,
logs, errors with trimmed tracebacks, strict JSON, and the state interface."""

from __future__ import annotations

import pytest

from reflow_microsandbox.errors import SandboxError, StateError
from reflow_microsandbox.sandbox.base import Backend

from .helpers import (
    EXAMPLES,
    DictState,
    Events,
    FailingState,
    actor_source,
    call,
    loaded,
)


async def test_seed_guide_example_runs_and_counts_in_state(backend: Backend) -> None:
    source = (EXAMPLES / "test_actor.py").read_text()
    sandbox = await loaded(backend, source)
    state, first, second = DictState(), Events(), Events()
    try:
        assert await call(sandbox, state=state, events=first) == {
            "status": "success",
            "counter": 0,
        }
        assert await call(sandbox, state=state, events=second) == {
            "status": "success",
            "counter": 1,
        }
    finally:
        await sandbox.close()
    assert first.outputs == [("test", "x" * 10000)]
    assert second.outputs == [("test", "x" * 10000)]
    assert state.values == {"counter": 2}


async def test_node_twin_of_the_example_runs_and_counts_in_state(backend: Backend) -> None:
    source = (EXAMPLES / "test_actor_js.js").read_text()
    sandbox = await backend.spawn("nodejs")
    state, events = DictState(), Events()
    try:
        metadata = await sandbox.load(actor_source(source, "nodejs", "test_actor_js"))
        assert metadata["component"] == "test_actor_js"
        assert await call(sandbox, state=state) == {"status": "success", "counter": 0}
        assert await call(sandbox, state=state, events=events) == {
            "status": "success",
            "counter": 1,
        }
    finally:
        await sandbox.close()
    assert events.outputs == [("test", "x" * 10000)]
    assert state.values == {"counter": 2}


@pytest.mark.parametrize(
    ("decorator", "component"),
    [
        ("@actor", "process"),
        ('@actor({"component": "doubler", "inports": ["x"], "outports": ["out"]})', "doubler"),
        ('@actor(name="doubler", inports=["x"], outports=["out"])', "doubler"),
    ],
    ids=["bare", "dict", "keywords"],
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["def", "async-def"])
async def test_all_three_actor_forms_load_and_run(
    backend: Backend, decorator: str, component: str, asynchronous: bool
) -> None:
    prefix = "async " if asynchronous else ""
    source = f"""
{decorator}
{prefix}def process(context):
    return {{"out": context.get_input("x") * 2}}
"""
    sandbox = await backend.spawn("python")
    try:
        metadata = await sandbox.load(actor_source(source))
        assert metadata["component"] == component
        assert await call(sandbox, {"x": 21}) == {"out": 42}
    finally:
        await sandbox.close()


async def test_context_carries_payload_config_ids_and_state_calls(backend: Backend) -> None:
    source = """
@actor
async def process(context):
    total = await context.increment_state("total", context.get_input("n", 1))
    await context.set_state("seen", True)
    await context.delete_state("old")
    return {
        "total": total,
        "missing": context.get_input("nope", "fallback"),
        "ids": [context.actor_id, context.namespace, context.timestamp],
    }
"""
    state = DictState()
    state.values["old"] = 1
    sandbox = await loaded(backend, source)
    try:
        assert await call(sandbox, {"n": 5}, state=state) == {
            "total": 5,
            "missing": "fallback",
            "ids": ["t", "tests", 1],
        }
    finally:
        await sandbox.close()
    assert state.values == {"total": 5, "seen": True}


async def test_return_values_become_outputs(backend: Backend) -> None:
    source = """
def process(context):
    return context.get_input("value")
"""
    sandbox = await loaded(backend, source)
    try:
        assert await call(sandbox, {"value": 7}) == {"output": 7}
        assert await call(sandbox, {"value": [1, 2]}) == {"output": [1, 2]}
        assert await call(sandbox, {"value": None}) == {}
    finally:
        await sandbox.close()


async def test_print_stderr_and_raw_fd_writes_become_log_events(backend: Backend) -> None:
    source = """
import os, sys
@actor
def process(context):
    print("hello from print")
    print("to stderr", file=sys.stderr)
    os.write(1, b"raw bytes on fd 1\\n")
    context.log("via context.log")
    return {"ok": True}
"""
    sandbox = await loaded(backend, source)
    events = Events()
    try:
        assert await call(sandbox, events=events) == {"ok": True}
        # The protocol survived all of it: a second call works too.
        assert await call(sandbox) == {"ok": True}
    finally:
        await sandbox.close()
    assert ("log", "info", "hello from print") in events.items
    assert ("log", "error", "to stderr") in events.items
    assert ("log", "info", "via context.log") in events.items
    assert any("raw bytes on fd 1" in message for message in events.logs)


async def test_exception_gives_script_error_with_traceback_trimmed_to_the_script(
    backend: Backend,
) -> None:
    source = """
def helper(value):
    return 1 / value

@actor
def process(context):
    return {"out": helper(context.get_input("x"))}
"""
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox, {"x": 0})
        assert await call(sandbox, {"x": 2}) == {"out": 0.5}
    finally:
        await sandbox.close()
    error = raised.value
    assert error.kind == "script_error"
    assert error.details["type"] == "ZeroDivisionError"
    trace = error.details["traceback"]
    assert 'File "t.py", line 7, in process' in trace
    assert 'File "t.py", line 3, in helper' in trace
    assert "return 1 / value" in trace
    assert "python_runner" not in trace
    assert trace.rstrip().endswith("ZeroDivisionError: division by zero")


@pytest.mark.parametrize("how", ["returned", "pushed"])
async def test_nan_output_is_a_clear_script_error(backend: Backend, how: str) -> None:
    body = (
        'return {"x": float("nan")}'
        if how == "returned"
        else 'await context.send_output("x", float("inf"))'
    )
    source = f"""
@actor
async def process(context):
    {body}
"""
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox)
        assert sandbox.alive
    finally:
        await sandbox.close()
    assert raised.value.kind == "script_error"
    assert "not strict JSON" in raised.value.message
    assert "NaN and Infinity" in raised.value.message


@pytest.mark.parametrize(
    "body",
    [
        'return {"x": 10 ** 400}',
        'return {"x": [1, -(10 ** 5000)]}',
        'await context.send_output("x", {"n": 2 ** 1024})',
        'await context.set_state("k", 10 ** 309)',
    ],
    ids=["returned", "over 4300 digits", "pushed", "stored"],
)
async def test_an_integer_beyond_a_double_is_a_clear_script_error(
    backend: Backend, body: str
) -> None:
    """Reflow's serde_json reads an integer beyond u64 as a double, and one beyond a
    double's range (about 1.8e308) fails the whole frame ("number out of range"): the
    client would drop the reply and wait out its 30 s. Such a value is refused as
    NaN is, naming where it is, before it leaves the sandbox."""
    source = f"""
@actor
async def process(context):
    {body}
    return {{}}
"""
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox)
        assert sandbox.alive
        ok = await loaded(backend, '@actor\ndef process(context):\n    return {"x": 10 ** 300}\n')
        try:
            assert (await call(ok))["x"] == 10**300  # within a double's range: sent as is
        finally:
            await ok.close()
    finally:
        await sandbox.close()
    assert raised.value.kind in ("script_error", "state_error")
    assert "outside the range of a 64-bit float" in raised.value.message


@pytest.mark.parametrize("frame", ["result", "output"])
async def test_a_forged_frame_with_an_integer_beyond_a_double_is_refused_by_the_control_plane(
    backend: Backend, frame: str
) -> None:
    """The runner lives in the sandbox: a script can write its own frames on the
    channel, skipping the runner's checks. The control plane refuses the value too."""
    field = '"outputs":{"x":1' if frame == "result" else '"port":"p","data":[-1'
    close = "}" if frame == "result" else "]"
    source = f"""
import gc, json
@actor
def process(context):
    channel = [o for o in gc.get_objects() if type(o).__name__ == "Channel"][0]
    head = '{{"type":"{frame}","call":' + json.dumps(context._call) + ',{field}'
    channel.send_bytes((head + "0" * 400 + "{close}}}").encode())
    return {{"x": 1}}
"""
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox)
    finally:
        await sandbox.close()
    assert raised.value.kind == "script_error"
    assert "outside the range of a 64-bit float" in raised.value.message


@pytest.mark.parametrize(
    ("thrown", "shown"),
    [("'getter boom'", "getter boom"), ("null", "null"), ("{code: 7}", "[object Object]")],
)
async def test_a_js_value_that_throws_a_non_error_while_serialized_says_what_it_threw(
    backend: Backend, thrown: str, shown: str
) -> None:
    """A getter (or ``toJSON``) that throws a string, null or a plain object while the
    result is serialized: a script_error with what was thrown, as a throw from
    ``process`` gets (not ``undefined``, nor the runner's own TypeError)."""
    source = f"module.exports = {{process: async () => ({{get out() {{ throw {thrown}; }}}})}};\n"
    sandbox = await loaded(backend, source, "nodejs")
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox)
        assert sandbox.alive
    finally:
        await sandbox.close()
    assert raised.value.kind == "script_error"
    assert raised.value.message.endswith(f"the returned value is not JSON-serializable: {shown}")


async def test_syntax_error_is_a_load_error(backend: Backend) -> None:
    sandbox = await backend.spawn("python")
    try:
        with pytest.raises(SandboxError) as raised:
            await sandbox.load(actor_source("def process(context:\n    return 1\n"))
    finally:
        await sandbox.close()
    assert raised.value.kind == "load_error"
    assert "SyntaxError" in raised.value.message


async def test_failing_state_store_fails_the_call_with_state_error_and_sandbox_survives(
    backend: Backend,
) -> None:
    source = """
@actor
async def process(context):
    try:
        value = await context.get_state("k", 0)
    except Exception as error:
        return {"caught": type(error).__name__}
    return {"value": value}
"""
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(StateError) as raised:
            await call(sandbox, state=FailingState())
        assert raised.value.kind == "state_error"
        assert "unreachable" in raised.value.message
        assert sandbox.alive
        assert await call(sandbox) == {"value": 0}
    finally:
        await sandbox.close()


async def test_asyncio_actor_can_await_real_coroutines(backend: Backend) -> None:
    source = """
import asyncio

@actor
async def process(context):
    await asyncio.sleep(0.01)
    values = await asyncio.gather(*(asyncio.sleep(0, result=i) for i in range(3)))
    return {"values": values, "state": await context.get_state("k", "d")}
"""
    sandbox = await loaded(backend, source)
    try:
        assert await call(sandbox) == {"values": [0, 1, 2], "state": "d"}
    finally:
        await sandbox.close()


NODE_METADATA = """
const metadata = {"component": "js_doubler", "inports": ["x"], "outports": ["out"]};
async function process(context) {
  console.log("doubling", context.getInput("x"));
  await context.sendOutput("early", 1);
  return { out: context.getInput("x") * 2 };
}
"""

NODE_JSDOC = """
/**
 * Triples its input.
 * @component js_tripler
 * @inport x
 * @outport out
 */
exports.process = async (context) => ({ out: context.get_input("x") * 3 });
"""


@pytest.mark.parametrize(
    ("source", "component", "expected"),
    [(NODE_METADATA, "js_doubler", {"out": 42}), (NODE_JSDOC, "js_tripler", {"out": 63})],
    ids=["metadata-named-function", "jsdoc-exported"],
)
async def test_node_actor_with_metadata_or_jsdoc_component(
    backend: Backend, source: str, component: str, expected: dict[str, int]
) -> None:
    sandbox = await backend.spawn("nodejs")
    events = Events()
    try:
        metadata = await sandbox.load(actor_source(source, "nodejs"))
        assert metadata["component"] == component
        assert await call(sandbox, {"x": 21}, events=events) == expected
    finally:
        await sandbox.close()
    if component == "js_doubler":
        assert events.items == [("log", "info", "doubling 21"), ("output", "early", 1)]


async def test_node_errors_are_trimmed_and_nan_is_refused(backend: Backend) -> None:
    source = """
function process(context) {
  if (context.getInput("mode") === "nan") return { x: NaN };
  return context.getInput("missing").field;
}
"""
    sandbox = await loaded(backend, source, "nodejs")
    try:
        with pytest.raises(SandboxError) as thrown:
            await call(sandbox, {"mode": "throw"})
        with pytest.raises(SandboxError) as nan:
            await call(sandbox, {"mode": "nan"})
        assert sandbox.alive
    finally:
        await sandbox.close()
    assert thrown.value.kind == "script_error"
    assert thrown.value.details["type"] == "TypeError"
    trace = thrown.value.details["traceback"]
    assert "t.js:4" in trace
    assert "node_runner" not in trace
    assert nan.value.kind == "script_error"
    assert "NaN and Infinity" in nan.value.message
