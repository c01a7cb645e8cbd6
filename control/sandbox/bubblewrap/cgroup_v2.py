"""cgroup v2 delegation: where a control plane may put its sandboxes' cgroups.

cgroup v2 lets processes live only in leaves ("no internal processes": a cgroup that
enables controllers for its children in ``cgroup.subtree_control`` may hold no
process itself; the root cgroup is exempt). systemd hands a service with
``Delegate=yes`` its own cgroup, e.g. ``/system.slice/reflow-microsandbox.service``,
with memory, cpu and pids *available* (``cgroup.controllers``) but not enabled for
children, and holding the service's processes. As systemd's delegation rules ask
(https://systemd.io/CGROUP_DELEGATION/, "don't put processes in inner nodes"), the
control plane moves its own processes into a leaf of their own, enables the
controllers in the delegated cgroup, and creates the sandboxes' cgroups beside the
leaf::

    reflow-microsandbox.service/        memory cpu pids enabled for children, no process
    ├── supervisor/                     the control plane (and whatever it started)
    └── reflow-microsandbox-<pid>-<n>/  one per backend, controllers enabled again
        └── bwrap-<id>/                 one per sandbox: memory.max, cpu.max, pids.max

A second backend in the same process (or a child control plane) finds itself in
``supervisor/`` with the controllers already enabled one level up, and reuses that
base. From the root cgroup (a host without systemd, or a test run as PID 1's child)
the root itself is the base. :func:`plan` decides (no I/O); :func:`prepare` does it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import HostError

log = logging.getLogger(__name__)

SUPERVISOR_LEAF = "supervisor"
"""The leaf the control plane's own processes move into (systemd's docs use this name)."""
CONTROLLERS = ("cpu", "memory", "pids")


class DelegationError(HostError, LookupError):
    """The cgroup v2 subtree cannot be prepared; the message says what the host lacks."""


@dataclass(frozen=True)
class Plan:
    """What :func:`prepare` does: ``base`` (a path in the hierarchy, ``/``-rooted) gets
    the sandbox cgroups; ``move_into_leaf``: its processes must first move to
    ``base/supervisor``."""

    base: str
    move_into_leaf: bool


def plan(own: str, *, is_hierarchy_root: bool, parent_enabled: frozenset[str]) -> Plan:
    """Decide where sandbox cgroups go, from the facts :func:`prepare` reads.

    ``own`` is this process's cgroup (``/proc/self/cgroup``'s ``0::`` path),
    ``is_hierarchy_root`` whether that is the real root cgroup (no ``cgroup.type``
    file), ``parent_enabled`` the controllers the parent of ``own`` enables for its
    children (empty for the root).
    """
    path = PurePosixPath(own)
    if is_hierarchy_root:
        return Plan(str(path), move_into_leaf=False)
    if path.name == SUPERVISOR_LEAF and set(CONTROLLERS) <= parent_enabled:
        return Plan(str(path.parent), move_into_leaf=False)
    return Plan(str(path), move_into_leaf=True)


def _procs(cgroup: Path) -> list[int]:
    return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]


def _enabled(cgroup: Path) -> frozenset[str]:
    try:
        return frozenset((cgroup / "cgroup.subtree_control").read_text().split())
    except OSError:
        return frozenset()


def own_cgroup() -> str:
    """This process's cgroup v2 path (the ``0::`` line of ``/proc/self/cgroup``)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    raise DelegationError("no cgroup v2 entry in /proc/self/cgroup")


def _decide(root: Path) -> Plan:
    own = own_cgroup()
    here = root / own.lstrip("/")
    return plan(
        own,
        is_hierarchy_root=not (here / "cgroup.type").exists(),
        parent_enabled=_enabled(here.parent) if own != "/" else frozenset(),
    )


def base_of(root: Path) -> Path:
    """Where this process's sandbox parents live (or would), without changing anything."""
    return root / _decide(root).base.lstrip("/")


def prepare(root: Path) -> Path:
    """Make the subtree usable and return the base cgroup directory for sandbox parents.

    Moves every process of the delegated cgroup into its ``supervisor`` leaf when
    needed, then enables memory, cpu and pids for the base's children.

    Raises:
        DelegationError: a controller is not available in the base (the unit lacks
            ``Delegate=yes``, or a container hides it), or processes keep appearing.
        OSError: the hierarchy is not writable (e.g. mounted read-only).
    """
    decided = _decide(root)
    base = root / decided.base.lstrip("/")
    available = set((base / "cgroup.controllers").read_text().split())
    missing = sorted(set(CONTROLLERS) - available)
    if missing:
        raise DelegationError(
            f"controllers {', '.join(missing)} are not delegated to {base} "
            "(a systemd unit needs Delegate=yes)"
        )
    if decided.move_into_leaf:
        _move_into_leaf(base)
    wanted = [c for c in CONTROLLERS if c not in _enabled(base)]
    if wanted:
        (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    return base


def _move_into_leaf(base: Path) -> None:
    leaf = base / SUPERVISOR_LEAF
    leaf.mkdir(exist_ok=True)
    moved = 0
    for _ in range(20):  # processes forked meanwhile are born here: move them too
        pids = _procs(base)
        if not pids:
            log.info(
                "cgroup v2: moved %d processes of %s into %s/ (Delegate=yes layout)",
                moved, base, SUPERVISOR_LEAF,
            )  # fmt: skip
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                (leaf / "cgroup.procs").write_text(str(pid))
                moved += 1
    raise DelegationError(f"processes keep appearing in {base}; cannot empty it")
