"""A sandbox's processes and their memory, read from /proc (no cgroup needed)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first (read from /proc)."""
    found = [pid]
    index = 0
    while index < len(found) and len(found) < 4096:
        current = found[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{task}/children").read_text()
                    found.extend(int(child) for child in children.split())
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of these processes (from /proc/PID/statm)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and friends of one process, in bytes."""
    result: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                result[name.strip()] = int(parts[0]) * 1024
    return result
