"""Limits: each call that breaks one ends with the error kind that names it, its
sandbox is gone, and the backend serves the next call; nothing outlives close()."""

from __future__ import annotations

import asyncio
import time

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend

from .helpers import TEST_SETTINGS, TIME_SCALE, assert_serves, call, loaded, processes_of_uids

FORK_BOMB = """
import os, time
@actor
def process(context):
    for started in range(500):
        try:
            pid = os.fork()
        except OSError as error:
            return {"blocked_after": started, "error": type(error).__name__}
        if pid == 0:
            while True:  # every child keeps forking too
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
    return {"blocked_after": None}
"""


async def test_fork_bomb_is_contained_and_server_keeps_serving(backend: Backend) -> None:
    bomb = await loaded(backend, FORK_BOMB)
    try:
        result = await call(bomb, timeout=5)
        assert result["error"] == "BlockingIOError"
        assert result["blocked_after"] is not None
        assert result["blocked_after"] <= TEST_SETTINGS["max_processes"]
        # While the bomb's processes still spin, other sandboxes start and answer.
        await assert_serves(backend)
    finally:
        await bomb.close()
    await assert_serves(backend)


@pytest.mark.parametrize(
    ("language", "source"),
    [
        (
            "python",
            "def process(context):\n    hog = bytearray(200 * 1024 * 1024)\n    return len(hog)\n",
        ),
        (
            "nodejs",
            "function process(context) {\n  const hog = [];\n"
            "  while (true) hog.push(new Array(100000).fill(hog.length));\n}\n",
        ),
        (
            "nodejs",  # off the V8 heap: only the cgroup (or the address space) stops it
            "function process(context) {\n  const hogs = [];\n"
            "  for (let i = 0; i < 40; i++) hogs.push(Buffer.alloc(8 * 1024 * 1024, 1));\n"
            "  return hogs.length;\n}\n",
        ),
    ],
    ids=["python-bytearray", "node-heap", "node-buffers"],
)
async def test_allocating_past_the_memory_limit_fails_with_memory(
    backend: Backend, language: str, source: str
) -> None:
    sandbox = await loaded(backend, source, language)  # type: ignore[arg-type]
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox, timeout=10)
        assert raised.value.kind == "memory", raised.value.message
        assert not sandbox.alive
    finally:
        await sandbox.close()
    await assert_serves(backend)


@pytest.mark.parametrize("language", ["python", "nodejs"])
async def test_endless_loop_is_stopped_with_timeout(backend: Backend, language: str) -> None:
    source = (
        "def process(context):\n    while True:\n        pass\n"
        if language == "python"
        else "function process(context) { while (true) {} }\n"
    )
    sandbox = await loaded(backend, source, language)  # type: ignore[arg-type]
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox, timeout=1)
        assert raised.value.kind == "timeout"
        assert not sandbox.alive
    finally:
        await sandbox.close()
    await assert_serves(backend)


CPU_SPIN = {
    "python": """
import time
def process(context):
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < context.get_input("seconds"):
        pass
    return {"cpu": time.process_time() - cpu, "wall": time.monotonic() - wall}
""",
    "nodejs": """
function process(context) {
  const wall = Date.now(), cpu = globalThis.process.cpuUsage();
  while (Date.now() - wall < context.getInput("seconds") * 1000) {}
  const used = globalThis.process.cpuUsage(cpu);
  return {cpu: (used.user + used.system) / 1e6, wall: (Date.now() - wall) / 1000};
}
""",
}


# 0.1 of a core; under emulation (TIME_SCALE 5) 0.5, or Node would need longer to start
# under the limit than the backend's start timeout allows (and the backend would refuse).
CPU_LIMIT = min(0.1 * TIME_SCALE, 0.5)


@pytest.mark.sandbox_settings(cpu_limit=CPU_LIMIT, call_timeout=20.0)
@pytest.mark.parametrize("language", ["python", "nodejs"])
async def test_a_busy_loop_gets_no_more_cpu_than_its_limit(backend: Backend, language: str) -> None:
    # Unthrottled, the loop would use a whole core (or its share of a busy machine's two,
    # still far above 0.1); with cpu_limit 0.1 the kernel lets it run 10 ms per 100 ms.
    sandbox = await loaded(backend, CPU_SPIN[language], language)  # type: ignore[arg-type]
    try:
        result = await call(sandbox, {"seconds": 3}, timeout=20)
    finally:
        await sandbox.close()
    cpu, wall = result["cpu"], result["wall"]
    assert isinstance(cpu, int | float) and isinstance(wall, int | float)
    assert wall >= 3
    assert cpu / wall <= CPU_LIMIT * 1.5, result


FLOODS = {
    "print": "def process(context):\n    while True:\n        print('y' * 1000)\n",
    "raw-fd": (
        "import os\ndef process(context):\n    while True:\n        os.write(1, b'z' * 65536)\n"
    ),
    "one-huge-output": "def process(context):\n    return {'big': 'x' * (4 * 1024 * 1024)}\n",
    # Text without line ends is output too (it once piled up in the runner until timeout).
    "no-line-ends": (
        "import sys\ndef process(context):\n"
        "    while True:\n        sys.stdout.write('y' * 65536)\n"
    ),
    "many-pushes": (
        "async def process(context):\n    while True:\n"
        "        await context.send_output('p', 'x' * 10000)\n"
    ),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
async def test_flooding_output_fails_with_output_too_large(backend: Backend, flood: str) -> None:
    sandbox = await loaded(backend, FLOODS[flood])
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox, timeout=10)
        assert raised.value.kind == "output_too_large", raised.value.message
        assert not sandbox.alive
    finally:
        await sandbox.close()
    await assert_serves(backend)


async def test_node_console_flood_fails_with_output_too_large(backend: Backend) -> None:
    source = "function process(context) { for (;;) console.log('y'.repeat(1000)); }\n"
    sandbox = await loaded(backend, source, "nodejs")
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox, timeout=10)
        assert raised.value.kind in ("output_too_large", "memory"), raised.value.message
    finally:
        await sandbox.close()
    await assert_serves(backend)


async def test_runner_killed_mid_call_is_crashed_and_next_sandbox_works(backend: Backend) -> None:
    source = "import os, signal\ndef process(context):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    sandbox = await loaded(backend, source)
    try:
        with pytest.raises(SandboxError) as raised:
            await call(sandbox)
        assert raised.value.kind == "crashed"
        assert not sandbox.alive
    finally:
        await sandbox.close()
    await assert_serves(backend)


async def test_writing_a_file_past_the_size_limit_fails_inside_the_script() -> None:
    settings = SandboxConfig(**{**TEST_SETTINGS, "max_file_size_mb": 1, "tmp_size_mb": 16})
    backend = BubblewrapBackend(settings)
    await backend.start()
    source = """
def process(context):
    try:
        with open("/tmp/big", "wb") as file:
            file.write(b"x" * (2 * 1024 * 1024))
        return {"written": True}
    except OSError as error:
        return {"written": False, "error": type(error).__name__}
"""
    try:
        sandbox = await loaded(backend, source)
        assert await call(sandbox) == {"written": False, "error": "OSError"}
    finally:
        await backend.close()


async def test_memory_usage_is_readable_per_sandbox(backend: Backend) -> None:
    sandbox = await backend.spawn("python")
    try:
        usage = sandbox.memory_usage()
        assert usage is not None
        assert 1024 * 1024 < usage < TEST_SETTINGS["memory_mb"] * 1024 * 1024
    finally:
        await sandbox.close()
    assert sandbox.memory_usage() is None


async def test_no_process_survives_backend_close(backend: Backend) -> None:
    if backend.name != "bubblewrap":
        pytest.skip("finds sandbox processes by their bubblewrap host uid")
    bomb = await loaded(backend, FORK_BOMB)
    await call(bomb, timeout=5)
    sleeper = await loaded(
        backend,
        "import subprocess\ndef process(context):\n"
        "    subprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(600)'])\n"
        "    return {}\n",
    )
    await call(sleeper)
    idle_node = await backend.spawn("nodejs")
    uids = {getattr(s, "_uid", -1) for s in (bomb, sleeper, idle_node)}
    pids = [pid for s in (bomb, sleeper, idle_node) for pid in getattr(s, "pids", [])]
    assert processes_of_uids(uids)  # the check sees them while they run
    await backend.close()
    # Killed processes leave /proc once torn down and reaped: wait for that, bounded.
    deadline = time.monotonic() + 10
    while processes_of_uids(uids) or any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert processes_of_uids(uids) == []
    assert [pid for pid in pids if _running(pid)] == []


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
