"""rlimits of bubblewrap sandboxes: the floor that always holds, cgroups or not.

They are set by util-linux ``prlimit`` right before bwrap runs, so the runner and all it
starts inherit them. ``RLIMIT_NPROC`` counts processes per *user*, so every sandbox runs
as its own host uid (:mod:`.uids`): with one shared uid, one fork bomb would starve every
other sandbox, and for host root the limit is not enforced at all.
"""

from __future__ import annotations

import resource

from .limits import Limits


def rlimits(limits: Limits) -> list[tuple[int, int]]:
    """(resource, value) pairs; soft and hard limits are set alike."""
    pairs = [
        (resource.RLIMIT_NPROC, limits.tasks),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_CORE, 0),
    ]
    if limits.address_space_bytes is not None:
        pairs.append((resource.RLIMIT_AS, limits.address_space_bytes))
    return pairs


_PRLIMIT_NAMES = {
    resource.RLIMIT_NPROC: "nproc",
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_CORE: "core",
    resource.RLIMIT_AS: "as",
}


def prlimit_command(limits: Limits, prlimit: str = "prlimit") -> list[str]:
    """An argv prefix (util-linux ``prlimit``) that starts the sandbox under its rlimits.

    The limits are set before bwrap runs, so they hold from the first instruction.
    Setting them afterwards with ``prlimit(2)`` needs CAP_SYS_RESOURCE over the
    sandbox's user namespace, which the control plane may lack (containers drop it),
    and a ``preexec_fn`` is not safe in a threaded asyncio process.
    """
    argv = [prlimit]
    for which, value in rlimits(limits):
        argv.append(f"--{_PRLIMIT_NAMES[which]}={value}:{value}")
    argv.append("--")
    return argv
