"""The call boundary, on both backends and in both runners (../shared/cases/call-boundary/).

What a call leaves behind (threads, timers, unawaited tasks and promises, children)
never reaches a later call; a runner with an uncaught exception outside its call, or
whose call left processes running, is retired; forked children and exit() behave as
in plain Python; every value gets an answer; output without newlines is capped.
Each test waits for what it asserts (a file the late code writes, the sandbox's state),
never for a fixed time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend, Sandbox
from reflow_microsandbox.vocabulary import Language

from .helpers import Events, actor_source, call, loaded


async def wait_until_retired(sandbox: Sandbox, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while sandbox.alive and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert not sandbox.alive, "the sandbox was not retired"
    reason = sandbox.retire_reason
    assert reason is not None
    return reason


# -- case 01: late output from a thread / timer / task of an earlier call -----------------

LATE_PY_THREAD = """
import os, sys, threading, time

@actor
def process(context):
    if context.get_input("mode") == "spawn":
        def later():
            time.sleep(0.2)
            print("LEAK-LOG from an earlier call's thread")
            sys.stderr.write("LEAK-STDERR\\n")
            context.send_output("leak", "LEAK-OUTPUT")
            context.log("LEAK-CONTEXT-LOG")
            open("/tmp/leaked", "w").close()
        threading.Thread(target=later, daemon=True).start()
        return {"done": "spawn"}
    deadline = time.monotonic() + 10
    while not os.path.exists("/tmp/leaked") and time.monotonic() < deadline:
        time.sleep(0.01)
    print("own log")
    return {"done": "wait", "leaked": os.path.exists("/tmp/leaked")}
"""

LATE_PY_TASK = """
import asyncio, os, time

@actor
async def process(context):
    if context.get_input("mode") == "spawn":
        async def later():
            await asyncio.sleep(0.2)
            print("LEAK-LOG from an earlier call's task")
            await context.send_output("leak", "LEAK-OUTPUT")
            open("/tmp/leaked", "w").close()
        context.task = asyncio.get_running_loop().create_task(later())  # never awaited
        return {"done": "spawn"}
    deadline = time.monotonic() + 10
    while not os.path.exists("/tmp/leaked") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print("own log")
    return {"done": "wait", "leaked": os.path.exists("/tmp/leaked")}
"""

LATE_JS = """
const fs = require('fs');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = {
  process: async (context) => {
    if (context.getInput('mode') === 'spawn') {
      setTimeout(() => {
        console.log('LEAK-LOG from an earlier call\\'s timer');
        process.stderr.write('LEAK-STDERR\\n');
        context.sendOutput('leak', 'LEAK-OUTPUT');
      }, 150);
      (async () => {  // a promise nobody awaits
        await sleep(200);
        console.log('LEAK-LOG from an earlier call\\'s promise');
        context.log('LEAK-CONTEXT-LOG');
        fs.writeFileSync('/tmp/leaked', '');
      })();
      return { done: 'spawn' };
    }
    const deadline = Date.now() + 10000;
    while (!fs.existsSync('/tmp/leaked') && Date.now() < deadline) await sleep(10);
    console.log('own log');
    return { done: 'wait', leaked: fs.existsSync('/tmp/leaked') };
  },
};
"""


@pytest.mark.parametrize(
    ("language", "source"),
    [("python", LATE_PY_THREAD), ("python", LATE_PY_TASK), ("nodejs", LATE_JS)],
    ids=["python-thread", "python-asyncio-task", "nodejs-timer-and-promise"],
)
async def test_what_a_call_leaves_running_never_reaches_the_next_call(
    backend: Backend, language: Language, source: str
) -> None:
    sandbox = await loaded(backend, source, language)
    first, second = Events(), Events()
    try:
        assert await call(sandbox, {"mode": "spawn"}, events=first) == {"done": "spawn"}
        # The second call runs while the first call's leftovers write: it waits for them.
        result = await call(sandbox, {"mode": "wait"}, events=second, timeout=15)
        assert result == {"done": "wait", "leaked": True}
        assert second.items == [("log", "info", "own log")]
        assert first.outputs == []
        assert not any("LEAK" in message for message in first.logs)
        assert sandbox.take_stray_frames() >= 2
        assert sandbox.alive  # a few stray frames: dropped and counted, not retired
        assert await call(sandbox, {"mode": "wait"}) == {"done": "wait", "leaked": True}
    finally:
        await sandbox.close()


async def test_a_thread_of_the_running_call_still_logs_into_it(backend: Backend) -> None:
    source = """
import threading

@actor
def process(context):
    def work():
        print("from a worker thread")
        context.send_output("partial", 1)
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return {"done": True}
"""
    sandbox = await loaded(backend, source)
    events = Events()
    try:
        assert await call(sandbox, events=events) == {"done": True}
    finally:
        await sandbox.close()
    assert events.items == [("log", "info", "from a worker thread"), ("output", "partial", 1)]


# -- case 03: exceptions outside any call -------------------------------------------------------

TIMER_THROW_JS = """
const metadata = {"component": "timer_throw", "inports": ["mode"], "outports": ["done"]};

async function run(context) {
  const mode = context.getInput("mode", "ok");
  if (mode === "throw") {
    await new Promise(() => setTimeout(() => {
      throw new Error("thrown inside a timer callback");
    }, 20));
  }
  if (mode === "reject") {
    Promise.reject(new Error("a rejection nobody handles"));
    await new Promise(() => {});
  }
  if (mode === "later") {
    setTimeout(() => { throw new Error("thrown after the call answered"); }, 50);
  }
  return { done: mode };
}
module.exports = { metadata, run };
"""


@pytest.mark.parametrize("mode", ["throw", "reject"])
async def test_an_uncaught_exception_in_a_call_fails_it_at_once_and_retires_the_sandbox(
    backend: Backend, mode: str
) -> None:
    sandbox = await loaded(backend, TIMER_THROW_JS, "nodejs")
    try:
        with pytest.raises(SandboxError) as caught:
            await call(sandbox, {"mode": mode}, timeout=15)
        assert caught.value.kind == "script_error"
        assert "timer callback" in caught.value.message or "nobody handles" in caught.value.message
        assert "uncaught" in await wait_until_retired(sandbox)
    finally:
        await sandbox.close()


async def test_an_exception_after_the_call_answered_retires_the_sandbox_before_its_next_call(
    backend: Backend,
) -> None:
    sandbox = await loaded(backend, TIMER_THROW_JS, "nodejs")
    try:
        assert await call(sandbox, {"mode": "later"}) == {"done": "later"}
        reason = await wait_until_retired(sandbox)
        assert "outside its call" in reason
        assert sandbox.take_stray_frames() >= 1
    finally:
        await sandbox.close()


async def test_a_python_thread_exception_after_its_call_retires_the_sandbox(
    backend: Backend,
) -> None:
    source = """
import threading, time

@actor
def process(context):
    def later():
        time.sleep(0.05)
        raise RuntimeError("a thread failed after its call")
    threading.Thread(target=later).start()
    return {"ok": True}
"""
    sandbox = await loaded(backend, source)
    try:
        assert await call(sandbox) == {"ok": True}
        assert "outside its call" in await wait_until_retired(sandbox)
    finally:
        await sandbox.close()


async def test_a_python_thread_exception_during_its_call_is_an_error_log_of_it(
    backend: Backend,
) -> None:
    source = """
import threading

@actor
def process(context):
    worker = threading.Thread(target=lambda: 1 / 0, name="worker")
    worker.start()
    worker.join()
    return {"ok": True}
"""
    sandbox = await loaded(backend, source)
    events = Events()
    try:
        assert await call(sandbox, events=events) == {"ok": True}
        assert sandbox.alive
    finally:
        await sandbox.close()
    [entry] = events.items
    assert entry[0:2] == ("log", "error")
    assert "ZeroDivisionError" in entry[2] and "1 / 0" in entry[2]


# -- case 06: processes behave as in plain Python and Node --------------------------------------

FORK_EXIT = """
import os, sys

@actor
def process(context):
    how = context.get_input("how")
    pid = os.fork()
    if pid == 0:
        print("hello from the child")
        if how == "sys.exit":
            sys.exit(0)
        if how == "exit-3":
            sys.exit(3)
        if how == "raise":
            raise ValueError("the child failed")
        if how == "context":
            context.send_output("from-child", 1)
        if how == "return":
            return {"child": "returned"}
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return {"status": os.waitstatus_to_exitcode(status)}
"""


@pytest.mark.parametrize(
    ("how", "code"),
    [("sys.exit", 0), ("exit-3", 3), ("raise", 1), ("return", 0), ("context", 1), ("_exit", 0)],
)
async def test_a_forked_child_exits_like_plain_python_and_never_speaks_the_protocol(
    backend: Backend, how: str, code: int
) -> None:
    sandbox = await loaded(backend, FORK_EXIT)
    try:
        for _ in range(3):
            events = Events()
            assert await call(sandbox, {"how": how}, events=events) == {"status": code}
            assert events.outputs == []
            assert "hello from the child" in "\n".join(events.logs)
        assert sandbox.alive  # nothing was left behind
    finally:
        await sandbox.close()


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (
            "python",
            "import os, time\n@actor\ndef process(context):\n"
            "    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    return {'left': True}\n",
        ),
        (
            "nodejs",
            "const { spawn } = require('child_process');\n"
            "module.exports = { process: async () => {\n"
            "  spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], {stdio: 'ignore'});\n"
            "  return { left: true };\n} };\n",
        ),
    ],
    ids=["python-fork", "nodejs-spawn"],
)
async def test_a_call_that_leaves_a_process_running_retires_its_sandbox(
    backend: Backend, language: Language, source: str
) -> None:
    sandbox = await loaded(backend, source, language)
    try:
        assert await call(sandbox, timeout=10) == {"left": True}
        assert "processes" in await wait_until_retired(sandbox)
    finally:
        await sandbox.close()


@pytest.mark.parametrize(
    ("statement", "error_type"),
    [
        ("exit()", "SystemExit"),
        ("quit(2)", "SystemExit"),
        ("sys.exit('bye')", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ],
)
async def test_exit_quit_and_keyboard_interrupt_are_script_errors_with_a_traceback(
    backend: Backend, statement: str, error_type: str
) -> None:
    source = f"import sys\n@actor\ndef process(context):\n    {statement}\n"
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as caught:
            await call(sandbox)
        assert caught.value.kind == "script_error"
        assert caught.value.details["type"] == error_type
        trace = caught.value.details["traceback"]
        assert trace.startswith("Traceback") and statement in trace
        assert "t.py" in trace and "python_runner" not in trace
        assert sandbox.alive
        with pytest.raises(SandboxError):  # the sandbox serves the next call
            await call(sandbox)
    finally:
        await sandbox.close()


async def test_node_scripts_keep_the_global_process_object(backend: Backend) -> None:
    source = """
module.exports = {
  process: async (context) => ({ pid: typeof process.pid, exit: typeof process.exit }),
};
"""
    sandbox = await loaded(backend, source, "nodejs")
    try:
        assert await call(sandbox) == {"pid": "number", "exit": "function"}
    finally:
        await sandbox.close()


# -- case 04 and values too deep: every value gets an answer ----------------------------------

BAD_VALUES_PY = """
@actor
async def process(context):
    how = context.get_input("how")
    bad = "abc" + chr(0xD800) + "def"
    deep = []
    for _ in range(context.get_input("depth", 150)):
        deep = [deep]
    if how == "return":
        return {"text": bad}
    if how == "key":
        return {bad: 1}
    if how == "push":
        await context.send_output("text", bad)
    if how == "state":
        await context.set_state("k", bad)
    if how == "log":
        print("before", bad, "after")
        return {"logged": True}
    if how == "deep-return":
        return {"deep": deep}
    if how == "deep-push":
        await context.send_output("deep", deep)
    if how == "deep-state":
        await context.set_state("k", deep)
    return {"unexpected": True}
"""

BAD_VALUES_JS = """
module.exports = {
  process: async (context) => {
    const how = context.getInput('how');
    const bad = 'abc' + String.fromCharCode(0xD800) + 'def';
    let deep = [];
    for (let i = 0; i < context.getInput('depth', 150); i++) deep = [deep];
    if (how === 'return') return { text: bad };
    if (how === 'key') return { [bad]: 1 };
    if (how === 'push') await context.sendOutput('text', bad);
    if (how === 'state') await context.setState('k', bad);
    if (how === 'log') { console.log('before', bad, 'after'); return { logged: true }; }
    if (how === 'deep-return') return { deep };
    if (how === 'deep-push') await context.sendOutput('deep', deep);
    if (how === 'deep-state') await context.setState('k', deep);
    return { unexpected: true };
  },
};
"""


@pytest.mark.parametrize("language", ["python", "nodejs"])
@pytest.mark.parametrize(
    ("how", "depth", "mentions"),
    [
        ("return", 0, "lone surrogate (U+D800)"),
        ("key", 0, "lone surrogate (U+D800)"),
        ("push", 0, "lone surrogate (U+D800)"),
        ("state", 0, "lone surrogate (U+D800)"),
        ("deep-return", 150, "nests deeper than 100 levels"),
        ("deep-return", 5000, "nests deeper than 100 levels"),
        ("deep-push", 150, "nests deeper than 100 levels"),
        ("deep-state", 101, "nests deeper than 100 levels"),
    ],
)
async def test_values_utf8_cannot_carry_or_too_deep_are_script_errors_saying_so(
    backend: Backend, language: Language, how: str, depth: int, mentions: str
) -> None:
    source = BAD_VALUES_PY if language == "python" else BAD_VALUES_JS
    sandbox = await loaded(backend, source, language)
    try:
        with pytest.raises(SandboxError) as caught:
            await call(sandbox, {"how": how, "depth": depth})
        assert caught.value.kind == "script_error"
        assert mentions in caught.value.message
        # The sandbox goes on serving; values at the limit pass.
        assert await call(sandbox, {"how": "deep-return", "depth": 99}) is not None
    finally:
        await sandbox.close()


@pytest.mark.parametrize("language", ["python", "nodejs"])
async def test_a_log_line_with_a_lone_surrogate_arrives_with_a_replacement(
    backend: Backend, language: Language
) -> None:
    source = BAD_VALUES_PY if language == "python" else BAD_VALUES_JS
    sandbox = await loaded(backend, source, language)
    events = Events()
    try:
        assert await call(sandbox, {"how": "log"}, events=events) == {"logged": True}
    finally:
        await sandbox.close()
    [line] = events.logs
    assert line.startswith("before abc") and line.endswith("def after")
    line.encode("utf-8")  # valid Unicode: the client can be sent it


# -- case 16: output without newlines is capped --------------------------------------------------

FLOOD_PY = """
import os, sys

@actor
def process(context):
    how = context.get_input("how")
    chunk = "x" * 1000
    while True:
        if how == "stdout":
            sys.stdout.write(chunk)
        elif how == "stderr":
            sys.stderr.write(chunk)
        elif how == "print-end":
            print(chunk, end="")
        elif how == "fd1":
            os.write(1, chunk.encode())
        elif how == "fd2":
            os.write(2, chunk.encode())
"""

FLOOD_JS = """
const fs = require('fs');
module.exports = {
  process: async (context) => {
    const how = context.getInput('how');
    const chunk = 'x'.repeat(1000);
    for (;;) {
      if (how === 'stdout') process.stdout.write(chunk);
      else if (how === 'stderr') process.stderr.write(chunk);
      else if (how === 'fd1') fs.writeSync(1, chunk);
      else if (how === 'fd2') fs.writeSync(2, chunk);
    }
  },
};
"""


@pytest.mark.parametrize(
    ("language", "how"),
    [
        ("python", "stdout"),
        ("python", "stderr"),
        ("python", "print-end"),
        ("python", "fd1"),
        ("python", "fd2"),
        ("nodejs", "stdout"),
        ("nodejs", "stderr"),
        ("nodejs", "fd1"),
        ("nodejs", "fd2"),
    ],
)
async def test_output_without_newlines_counts_against_the_cap(
    backend: Backend, language: Language, how: str
) -> None:
    sandbox = await loaded(backend, FLOOD_PY if language == "python" else FLOOD_JS, language)
    try:
        with pytest.raises(SandboxError) as caught:
            await call(sandbox, {"how": how}, timeout=20)
        assert caught.value.kind == "output_too_large"
    finally:
        await sandbox.close()


async def test_a_partial_line_reaches_the_call_in_4_kib_pieces(backend: Backend) -> None:
    source = """
import sys

@actor
def process(context):
    for _ in range(100):
        sys.stdout.write("y" * 100)
    return {"ok": True}
"""
    sandbox = await loaded(backend, source)
    events = Events()
    try:
        assert await call(sandbox, events=events) == {"ok": True}
    finally:
        await sandbox.close()
    assert "".join(events.logs) == "y" * 10_000
    assert [len(piece) for piece in events.logs] == [4100, 4100, 1800]


async def test_the_traceback_names_the_script_by_its_relative_path(backend: Backend) -> None:
    source = "@actor\ndef process(context):\n    raise ValueError('boom')\n"
    sandbox = await backend.spawn("python")
    try:
        await sandbox.load(
            actor_source(source).__class__(
                name="t", namespace="math", language="python", source=source,
                filename="math/t.py",
            )
        )
        with pytest.raises(SandboxError) as caught:
            await call(sandbox)
    finally:
        await sandbox.close()
    assert 'File "math/t.py", line 3' in caught.value.details["traceback"]
