"""A control plane that dies without cleaning up (SIGKILL) takes its sandboxes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

CONTROL_PLANE = """
import asyncio
from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.vocabulary import ActorSource, CallContext
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from tests.runtime.helpers import DictState, Events

SPIN = "import os\\n@actor\\ndef process(context):\\n    os.fork()\\n    while True: pass\\n"

async def main():
    backend = BubblewrapBackend(SandboxConfig(call_timeout=29))
    await backend.start()
    busy = await backend.spawn("python")
    await busy.load(ActorSource("spin", "tests", "python", SPIN))
    from reflow_microsandbox.sandbox.bubblewrap.procfs import descendants
    before = len(descendants(busy.pids[0]))
    call = asyncio.ensure_future(
        busy.call(CallContext("spin", "tests"), DictState(), Events(), timeout=29))
    # Wait (bounded) until the script has forked: then it spins and reads no pipe.
    deadline = asyncio.get_running_loop().time() + 20
    while len(descendants(busy.pids[0])) <= before:
        assert asyncio.get_running_loop().time() < deadline, "the script did not fork"
        await asyncio.sleep(0.01)
    idle = await backend.spawn("nodejs")
    pids = busy.pids + idle.pids
    pids = sorted(set(pids) | set(descendants(busy.pids[0])))
    print(" ".join(str(pid) for pid in pids), flush=True)
    await call

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sandboxes_die_with_a_sigkilled_control_plane() -> None:
    plane = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert plane.stdout is not None
        pids = [int(pid) for pid in plane.stdout.readline().split()]
        assert len(pids) >= 4 and all(_alive(pid) for pid in pids)
        os.kill(plane.pid, signal.SIGKILL)
        plane.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        if plane.poll() is None:
            plane.kill()
            plane.wait()
