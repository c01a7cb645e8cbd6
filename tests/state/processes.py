"""Run counter_worker.py in several real processes at once (shared by the store tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("counter_worker.py")


def run_counter_processes(kind: str, target: str, processes: int, calls_each: int) -> None:
    """Start the workers, release them together, and wait until all have finished."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), kind, target, str(calls_each)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            assert line == "ready", f"worker did not start: {line!r} {_stderr(worker)}"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0 and "done" in out, f"worker failed: {err}"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _stderr(worker: subprocess.Popen[str]) -> str:
    if worker.poll() is None:
        return ""
    assert worker.stderr is not None
    return worker.stderr.read()
