"""cgroups of bubblewrap sandboxes, where the host offers them.

cgroups (v2, or the v1 hybrid layout with separate ``memory``, ``cpu`` and ``pids``
hierarchies) give the real limits: memory without swap, a CPU quota, a process
count, an OOM-kill counter that tells "memory" from "crashed", and the memory
figure for the metric. One parent cgroup per backend, one child per sandbox, both
removed on close: on v1 below the control plane's own cgroup, on v2 beside the leaf
the control plane moves itself into (:mod:`.cgroup_v2`: the layout systemd expects
of a ``Delegate=yes`` service). When the host gives no usable hierarchy,
:class:`CgroupsUnusable` says why, and the backend refuses to start unless
``sandbox.allow_rlimits_only`` is set (see ``sandbox/enforced.py`` for what then holds).
The figures come from :class:`~.limits.Limits`; the rlimits that always apply besides
are in :mod:`.rlimits`. The cgroup is joined once the runner reported ready: only
trusted runner code has run by then, and whatever the script starts later is born
inside it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from ...errors import HostError
from . import cgroup_v2
from .limits import Limits

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
CPU_SHARES_V1 = 1024  # the kernel's default cpu.shares (cgroup v1)
CPU_WEIGHT_V2 = 100  # the kernel's default cpu.weight (cgroup v2)
_counter = itertools.count()


def _write(path: Path, value: str | int) -> None:
    path.write_text(str(value))


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the hierarchy of ``controller`` ('' for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise LookupError(controller)


class CgroupsUnusable(HostError):
    """This process cannot create sandbox cgroups here; the message says why."""


class SandboxCgroup:
    """The cgroup(s) of one sandbox: limits set, processes added, usage read."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    def _file(self, controller: str, name: str) -> Path:
        return self.dirs[controller] / name

    def add(self, pids: Iterable[int]) -> None:
        """Move processes in (each v1 hierarchy separately); ones already in are skipped.

        Each write to ``cgroup.procs`` waits for an RCU grace period (milliseconds), so
        processes that were born inside (they inherit their parent's cgroups) cost nothing.
        """
        wanted = list(pids)
        for directory in set(self.dirs.values()):
            try:
                inside = {int(p) for p in (directory / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                inside = set()
            for pid in wanted:
                if pid not in inside:
                    with contextlib.suppress(ProcessLookupError):
                        _write(directory / "cgroup.procs", pid)

    def memory_usage(self) -> int | None:
        """Memory charged to the cgroup (process memory, page cache, tmpfs files)."""
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int(self._file("memory", name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """How often the kernel killed a process here for memory."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = self._file("memory", name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def set_cpu_share(self, share: float) -> None:
        """Write the CPU weight for ``share`` (0, 1] of the default: ``cpu.shares`` on v1
        (default 1024, at least 2), ``cpu.weight`` on v2 (default 100, 1..10000). The
        weight counts only against sibling cgroups under contention; the quota
        (``cpu.max`` / ``cpu.cfs_quota_us``) stays. Raises OSError when it cannot write."""
        share = min(max(share, 0.0), 1.0)
        if self.version == 2:
            _write(self._file("memory", "cpu.weight"), max(1, round(CPU_WEIGHT_V2 * share)))
        else:
            _write(self._file("cpu", "cpu.shares"), max(2, round(CPU_SHARES_V1 * share)))

    def set_cpu_quota(self, cores: float) -> None:
        """Write the CPU quota (``cpu.max`` on v2, ``cpu.cfs_quota_us`` on v1) for
        ``cores`` CPUs per period. Raises OSError when it cannot write."""
        quota = max(1000, int(cores * CPU_PERIOD_US))
        if self.version == 2:
            _write(self._file("memory", "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        else:
            _write(self._file("cpu", "cpu.cfs_quota_us"), quota)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in set(self.dirs.values()):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the directories; False while processes remain."""
        removed = True
        for directory in set(self.dirs.values()):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


class CgroupManager:
    """The backend's parent cgroup(s); makes one :class:`SandboxCgroup` per sandbox."""

    V1_CONTROLLERS = ("memory", "cpu", "pids")

    def __init__(self, version: int, parents: dict[str, Path]) -> None:
        self.version = version
        self.parents = parents

    @classmethod
    def create(cls, root: Path = CGROUP_ROOT) -> CgroupManager:
        """Detect the layout and create the parent cgroup.

        Raises:
            CgroupsUnusable: the host gives this process no writable hierarchy with
                memory, cpu and pids (the message says why).
        """
        name = f"reflow-microsandbox-{os.getpid()}-{next(_counter)}"
        try:
            if (root / "cgroup.controllers").exists():
                return cls._create_v2(root, name)
            return cls._create_v1(root, name)
        except (OSError, LookupError, ValueError) as error:
            raise CgroupsUnusable(str(error)) from error

    @classmethod
    def _create_v1(cls, root: Path, name: str) -> CgroupManager:
        parents: dict[str, Path] = {}
        try:
            for controller in cls.V1_CONTROLLERS:
                base = root / controller
                if not (base / "cgroup.procs").exists():
                    raise LookupError(f"no v1 {controller} hierarchy at {base}")
                parent = base / _own_cgroup(controller).lstrip("/") / name
                parent.mkdir()
                parents[controller] = parent
            # Hierarchical accounting, so the parent sees its children's memory.
            with contextlib.suppress(OSError):
                _write(parents["memory"] / "memory.use_hierarchy", 1)
        except BaseException:
            for parent in parents.values():
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise
        return cls(1, parents)

    @classmethod
    def _create_v2(cls, root: Path, name: str) -> CgroupManager:
        parent = cgroup_v2.prepare(root) / name  # see cgroup_v2.py: Delegate=yes layout
        parent.mkdir()
        try:
            enable = " ".join(f"+{c}" for c in cgroup_v2.CONTROLLERS)
            _write(parent / "cgroup.subtree_control", enable)
        except BaseException:
            parent.rmdir()
            raise
        return cls(2, {"memory": parent, "cpu": parent, "pids": parent})

    @staticmethod
    def cleanup_leftovers(root: Path = CGROUP_ROOT) -> int:
        """Remove parent cgroups left by control planes that no longer run; returns the count."""
        removed = 0
        candidates: list[Path] = []
        if (root / "cgroup.controllers").exists():
            with contextlib.suppress(OSError, LookupError):
                candidates.extend(cgroup_v2.base_of(root).glob("reflow-microsandbox-*"))
        for controller in CgroupManager.V1_CONTROLLERS:
            with contextlib.suppress(OSError, LookupError):
                own = root / controller / _own_cgroup(controller).lstrip("/")
                candidates.extend(own.glob("reflow-microsandbox-*"))
        for parent in candidates:
            pid = parent.name.split("-")[2]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue
            for child in parent.iterdir():
                if child.is_dir():
                    SandboxCgroup({"memory": child}, 1).kill_all()
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
                removed += 1
        return removed

    def sandbox(self, sandbox_id: str, limits: Limits) -> SandboxCgroup:
        """Create a child cgroup with the limits written."""
        dirs = {controller: parent / sandbox_id for controller, parent in self.parents.items()}
        for directory in set(dirs.values()):
            directory.mkdir()
        group = SandboxCgroup(dirs, self.version)
        try:
            if self.version == 2:
                self._limit_v2(dirs["memory"], limits)
            else:
                self._limit_v1(dirs, limits)
        except BaseException:
            group.remove()
            raise
        return group

    @staticmethod
    def _limit_v1(dirs: dict[str, Path], limits: Limits) -> None:
        memory = dirs["memory"]
        _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, limits.memory_bytes)  # no swap beyond the limit
        with contextlib.suppress(OSError):
            _write(memory / "memory.swappiness", 0)
        with contextlib.suppress(OSError):  # charge the runner's start-up memory here too
            _write(memory / "memory.move_charge_at_immigrate", 3)
        _write(dirs["cpu"] / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(dirs["cpu"] / "cpu.cfs_quota_us", max(1000, int(limits.cpu_limit * CPU_PERIOD_US)))
        _write(dirs["pids"] / "pids.max", limits.tasks)

    @staticmethod
    def _limit_v2(directory: Path, limits: Limits) -> None:
        _write(directory / "memory.max", limits.memory_bytes)
        with contextlib.suppress(OSError):
            _write(directory / "memory.swap.max", 0)
        quota = max(1000, int(limits.cpu_limit * CPU_PERIOD_US))
        _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        _write(directory / "pids.max", limits.tasks)

    def close(self) -> None:
        """Remove the parent cgroup(s) (children must be gone)."""
        for parent in set(self.parents.values()):
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        SandboxCgroup({"memory": child}, self.version).kill_all()
                        with contextlib.suppress(OSError):
                            child.rmdir()
                parent.rmdir()
