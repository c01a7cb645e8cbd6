"""Host uids for bubblewrap sandboxes: one per live sandbox, distinct across control planes.

Every sandbox runs as a host uid of its own (uid 65534 inside): never host root, and
``RLIMIT_NPROC``, which counts processes per *user*, then counts per sandbox, so one
fork bomb cannot starve the others (see :mod:`.rlimits`).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from ...errors import SandboxError

UID_BASE = 1_900_000_000
"""Host uids of sandboxes: ``UID_BASE + (pid % 4096) * 4096 + slot``, unused by any account."""
UIDS_PER_PROCESS = 4096


def uid_base(pid: int, uid_map: str) -> int:
    """The first of this control plane's :data:`UIDS_PER_PROCESS` sandbox uids.

    ``uid_map`` is the text of ``/proc/self/uid_map`` (lines ``inside outside count``).
    On a host (the whole 32-bit range mapped) it is ``UID_BASE + (pid % 4096) * 4096``:
    unused by any account and distinct across control planes. In a user namespace that
    maps fewer ids, e.g. a Kubernetes pod with ``hostUsers: false`` (65536 ids, see
    k8s/base/control-plane.yaml), those uids do not exist and setuid() to them fails;
    there the sandboxes take the 4096 ids just below 65534 (``nobody``) of the largest
    mapped range, which no account of the image uses and which the runtime already
    keeps apart from every other pod. Raises SandboxError when no range is large enough.
    """
    preferred = UID_BASE + (pid % 4096) * UIDS_PER_PROCESS
    ranges: list[tuple[int, int]] = []
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) == 3:
            ranges.append((int(fields[0]), int(fields[2])))
    if not ranges or any(
        first <= preferred and preferred + UIDS_PER_PROCESS <= first + count
        for first, count in ranges
    ):
        return preferred
    first, count = max(ranges, key=lambda r: r[1])
    top = min(first + count, 65534)
    if top - UIDS_PER_PROCESS <= first:
        raise SandboxError(
            "unavailable",
            f"this user namespace maps too few uids for sandboxes (uid_map: {uid_map.strip()!r});"
            f" {UIDS_PER_PROCESS} above root are needed",
        )
    return top - UIDS_PER_PROCESS


def _own_uid_map() -> str:
    try:
        return Path("/proc/self/uid_map").read_text()
    except OSError:
        return ""


class UidPool:
    """Host uids for sandboxes, one per live sandbox, distinct across control planes.

    Unused uids are handed out first, then the one freed longest ago: a killed sandbox's
    namespace init is reaped by the host's init, which may take a while, and until then it
    still counts against its uid's ``RLIMIT_NPROC``.
    """

    def __init__(self) -> None:
        self._base: int | None = None
        self._free: deque[int] = deque()
        self._next = 0

    def take(self) -> int:
        """A uid for a new sandbox; ``SandboxError('unavailable')`` when all are in use."""
        if self._base is None:  # the first sandbox, not import time: forks get their own
            self._base = uid_base(os.getpid(), _own_uid_map())
        if self._next < UIDS_PER_PROCESS:
            self._next += 1
            return self._base + self._next - 1
        if self._free:
            return self._free.popleft()
        raise SandboxError("unavailable", "no free sandbox uid (4096 sandboxes alive)")

    def give_back(self, uid: int) -> None:
        """The sandbox that had ``uid`` is gone."""
        self._free.append(uid)


UIDS = UidPool()
"""The process's one pool (every backend in the process draws from it)."""
