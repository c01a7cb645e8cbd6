"""A container's memory use, read from its cgroup files (fast, unlike the engine's stats API).

The engine's stats endpoint takes one to two seconds per answer; the cgroup files answer at
once. The cgroup is found from the container's first process (``/proc/PID/cgroup``), which
covers cgroup v1 (``memory/docker/ID``), v2 (``docker/ID`` or ``system.slice/docker-ID.scope``)
and both cgroup drivers. The figure is usage minus inactive file cache, as ``docker stats``
reports it. When the control plane cannot see the host's /proc (it runs in a container
itself), :func:`find_memory_cgroup` returns None and memory use is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryCgroup:
    """The files that hold one cgroup's memory use."""

    usage_file: Path
    stat_file: Path
    inactive_key: str

    def pids(self) -> list[int]:
        """Host pids of every process in the cgroup (empty once it is gone)."""
        try:
            text = (self.usage_file.parent / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(line) for line in text.split()]

    def usage(self) -> int | None:
        """Bytes in use (without inactive file cache), or None once the cgroup is gone."""
        try:
            usage = int(self.usage_file.read_text())
            inactive = 0
            for line in self.stat_file.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == self.inactive_key:
                    inactive = int(value)
                    break
        except (OSError, ValueError):
            return None
        return max(usage - inactive, 0)


def find_memory_cgroup(pid: int, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup of host process ``pid`` (v1 memory controller first, then v2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified: str | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = root / "memory" / path.lstrip("/")
            if (folder / "memory.usage_in_bytes").exists():
                return MemoryCgroup(
                    folder / "memory.usage_in_bytes", folder / "memory.stat", "total_inactive_file"
                )
        elif controllers == "":
            unified = path
    if unified is not None:
        for base in (root, root / "unified"):
            folder = base / unified.lstrip("/")
            if (folder / "memory.current").exists():
                return MemoryCgroup(
                    folder / "memory.current", folder / "memory.stat", "inactive_file"
                )
    return None
