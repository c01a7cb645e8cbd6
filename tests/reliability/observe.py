"""What a node holds, read from the host: memory, descriptors, sandboxes, cgroups, containers.

All of it comes from ``/proc``, ``/sys/fs/cgroup`` and the Docker CLI, not from the
node's own reports, so a leak the node does not know about still shows. Cgroup
paths follow ``control/sandbox/bubblewrap/cgroups.py``: each control plane makes a parent
``reflow-microsandbox-<pid>-<n>`` under its own cgroup, one child per sandbox.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWNER_PID_LABEL = "io.reflow.microsandbox.owner-pid"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of one process (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def host_available_bytes() -> int:
    """MemAvailable of the host."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _memory_hierarchy() -> Path:
    """Where memory cgroups live: the v1 memory hierarchy, or the v2 root."""
    return CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "memory"


def parent_cgroups(pid: int) -> list[Path]:
    """The memory cgroup parents a control plane ``pid`` made (they outlive it only
    until the next control plane cleans them up)."""
    base = _memory_hierarchy()
    return sorted(base.glob(f"**/reflow-microsandbox-{pid}-*"))


def sandbox_cgroups(pid: int) -> list[Path]:
    """One memory cgroup per live sandbox of control plane ``pid``."""
    return [child for parent in parent_cgroups(pid) for child in parent.iterdir() if child.is_dir()]


def cgroup_tasks(path: Path) -> int:
    """Processes in one cgroup (0 if it is gone)."""
    try:
        return len((path / "cgroup.procs").read_text().split())
    except OSError:
        return 0


def memory_peak(pid: int) -> int | None:
    """Peak memory use of all sandboxes of control plane ``pid`` together (bytes),
    from its parent cgroup; None where the kernel does not keep one."""
    for parent in parent_cgroups(pid):
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            with contextlib.suppress(OSError, ValueError):
                return int((parent / name).read_text())
    return None


def holding(pids: set[int], marker: str) -> list[int]:
    """The processes among ``pids`` with a file named ``marker`` open."""
    found = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/" + marker):
                        found.append(pid)
                        break
    return found


def parent_of(pid: int) -> int:
    """The parent pid (0 once the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def container_init(container: str) -> int:
    """The host pid of a running container's first process (0 if it is not running)."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", container],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def containers_of(pid: int) -> list[str]:
    """Ids of every container (running or not) a control plane ``pid`` started."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={OWNER_PID_LABEL}={pid}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.split()


@dataclass(frozen=True)
class NodeSample:
    """One look at a node: control-plane memory and descriptors, its sandboxes."""

    control_rss: int
    sandbox_rss: int
    fds: int
    sandbox_processes: int
    cgroups: int


def sample_node(pid: int, sandbox_pids: set[int]) -> NodeSample:
    return NodeSample(
        control_rss=rss_bytes(pid),
        sandbox_rss=sum(rss_bytes(p) for p in sandbox_pids),
        fds=open_fds(pid),
        sandbox_processes=len(sandbox_pids),
        cgroups=len(sandbox_cgroups(pid)),
    )
