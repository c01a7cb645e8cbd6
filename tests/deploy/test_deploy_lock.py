"""The deployment lock: parallel runs wait for each other, a run under flock(1) does not
wait for itself. Real flock(1) processes, real flock(2) locks on a temporary file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO_ROOT

from .support import deploy_lock

_HOLD_IN_CHILD = """
import fcntl, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.deploy.support import deploy_lock
with deploy_lock(Path({lock!r})):
    print("inside", flush=True)
# Leaving the block must not have released flock(1)'s lock: a fresh descriptor still
# finds it taken.
with open({lock!r}, "rb") as other:
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("released too early", flush=True)
    except BlockingIOError:
        print("still held by the parent", flush=True)
"""


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    lock = tmp_path / "deploy.lock"
    # flock(1) holds the lock until its child reads a line from us.
    holder = subprocess.Popen(
        ["flock", str(lock), "sh", "-c", "echo held; read line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "held\n"
    entered = threading.Event()

    def take() -> None:
        with deploy_lock(lock):
            entered.set()

    waiter = threading.Thread(target=take)
    waiter.start()
    # Still waiting while the other process holds it (a bounded look, not a sleep-and-hope:
    # the assertion that matters is that it does get in once released).
    assert not entered.wait(0.5)
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(timeout=30) == 0
    assert entered.wait(30)
    waiter.join(30)


def test_a_run_under_flock_does_not_wait_for_its_own_parent(tmp_path: Path) -> None:
    lock = tmp_path / "deploy.lock"
    script = _HOLD_IN_CHILD.format(root=str(REPO_ROOT), lock=str(lock))
    result = subprocess.run(
        ["flock", str(lock), sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "inside\nstill held by the parent\n"
    # Once flock(1) exited, the lock is free again for anyone.
    with deploy_lock(lock):
        pass
