"""Disk full where the server writes: its SQLite state, its log, its TMPDIR.

A small tmpfs made by the test holds all three; a filler file takes the rest of it.
What must hold: calls that write state fail with a clear ``state_error``, the others
go on, the node stays up; no stored state is corrupted or applied in part; when
space returns, state calls succeed again without a restart; a node can start with
its TMPDIR full. Needs root to mount the tmpfs (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reflow_microsandbox.state.codec import decode_value, state_key

from .conftest import StartDeployment
from .loadgen import OK, ActorInstance, Answer, Outcome, open_loop
from .observe import load_average

SIZE = "8m"


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A tmpfs of 8 MiB, unmounted and removed afterwards. It is mounted under /tmp,
    not pytest's private temp dir: the sandboxes' uids must be able to reach the
    runner files the node copies into its TMPDIR."""
    mount = Path(tempfile.mkdtemp(prefix="msb-small-disk-", dir="/tmp"))
    mount.chmod(0o755)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            mount.rmdir()


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it."""
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    with contextlib.suppress(OSError), filler.open("ab") as out:
        out.write(b"\0" * 4096)  # the last few bytes
    return filler


def stored(db: Path, instance: str) -> tuple[list[str], int, str]:
    """(tokens, total, integrity_check) from the SQLite file, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        values = {}
        for key in ("tokens", "total"):
            row = conn.execute(
                "SELECT value FROM state WHERE key = ?", (state_key("default", instance, key),)
            ).fetchone()
            values[key] = decode_value(row[0]) if row else None
    return values["tokens"] or [], values["total"] or 0, check


async def test_disk_full_under_the_server_fails_state_clearly_corrupts_nothing_and_recovers(
    start_deployment: StartDeployment, small_disk: Path
) -> None:
    db = small_disk / "state.db"
    deployment = await start_deployment(
        nodes=("a",),
        redis=False,
        changes={"state": {"sqlite_path": str(db)}},
        node_dir=small_disk / "node",  # its config and its log
        node_env={"TMPDIR": str(small_disk)},
    )
    node = deployment.nodes["a"]
    assert node.process is not None
    ledger = ActorInstance(deployment.url(), "ledger", instance="ledger-0")
    echo = ActorInstance(deployment.url(), "echo", instance="echo")
    tokens: dict[int, str] = {}
    kinds: dict[int, str] = {}  # ledger call -> what it came to

    async def call(index: int) -> Answer:
        if index % 3 == 2:
            return await echo.call({"data": index})
        tokens[index] = f"t{index}-" + "p" * 200  # the list outgrows the free pages soon
        answer = await ledger.call({"token": tokens[index]})
        kinds[index] = answer[0]
        return answer

    try:
        before = await open_loop(20, 1, call)
        assert before.summary.errors == {}, before.summary.errors
        filler = await asyncio.to_thread(fill, small_disk)

        # Keep calling until state writes fail for lack of space (bounded).
        full_errors: list[Outcome] = []
        deadline = time.monotonic() + 60
        offset = 1000
        while not full_errors:
            assert time.monotonic() < deadline, "no state write failed on the full disk"
            run = await open_loop(20, 1, lambda i, o=offset: call(o + i))
            full_errors = [o for o in run.outcomes if o.kind != OK]
            offset += 1000
        failure = full_errors[0]
        print(f"\n[load average {load_average()}] disk full: {failure.kind}: {failure.detail}")
        assert {o.kind for o in full_errors} == {"state_error"}
        assert "full" in failure.detail.lower()
        # Stateless calls go on; the node is up and answers.
        assert await echo.call({"data": "still"}) == (OK, "", {"out": "still"})
        assert node.process.poll() is None

        # Space returns: state calls succeed again, no restart.
        filler.unlink()
        recovered = None
        deadline = time.monotonic() + 30
        offset -= offset % 3  # ledger calls only
        while recovered != OK:
            assert time.monotonic() < deadline, "state calls did not recover"
            offset += 3
            recovered, _, _ = await call(offset)
        assert node.process.poll() is None
    finally:
        await ledger.close()
        await echo.close()

    # Nothing corrupted, nothing applied in part or twice, nothing acknowledged lost,
    # no failed update applied.
    saved, total, check = stored(db, "ledger-0")
    assert check == "ok"
    assert len(saved) == len(set(saved)) and total == len(saved)
    acknowledged = {tokens[i] for i, kind in kinds.items() if kind == OK}
    failed = {tokens[i] for i, kind in kinds.items() if kind != OK}
    assert acknowledged <= set(saved)
    assert not failed & set(saved)


async def test_a_node_starts_and_serves_with_its_tmpdir_full(
    start_deployment: StartDeployment, small_disk: Path
) -> None:
    fill(small_disk)
    deployment = await start_deployment(
        nodes=("a",), redis=False, node_env={"TMPDIR": str(small_disk)}
    )
    echo = ActorInstance(deployment.url(), "echo", instance="echo")
    try:
        assert await echo.call({"data": 1}) == (OK, "", {"out": 1})
    finally:
        await echo.close()
    assert os.statvfs(small_disk).f_bavail == 0  # it was full all along
