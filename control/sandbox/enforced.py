"""Which mechanism enforces each sandbox limit on this host (no I/O).

A backend reports, after ``start()``, one :class:`EnforcedLimit` per language and
limit; the server logs them at start and exports them as the gauge
``microsandbox_sandbox_limits_enforced{backend,language,limit,mechanism}`` (1 when
enforced, 0 for ``mechanism="none"``), so an operator can see, and alert on, a limit
the host does not give.

What each mechanism means for bubblewrap sandboxes (``bubblewrap/cgroups.py``,
``bubblewrap/rlimits.py``):

============  ======================  ==========================================
limit         with cgroups            rlimits alone (``allow_rlimits_only``)
============  ======================  ==========================================
memory        ``memory.max`` (v2) /   Python: ``RLIMIT_AS`` (address space, not
              ``memory.limit_in_...`` resident memory); Node: ``none`` (V8's
              (v1), no swap           ``--max-old-space-size`` caps only its heap;
                                      Buffers and native memory are unbounded)
cpu           ``cpu.max`` / CFS quota ``none``
processes     ``pids.max``            ``RLIMIT_NPROC`` per sandbox uid
open_files    ``RLIMIT_NOFILE``       ``RLIMIT_NOFILE``
file_size     ``RLIMIT_FSIZE``        ``RLIMIT_FSIZE``
============  ======================  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..vocabulary import Language

LIMITS = ("memory", "cpu", "processes", "open_files", "file_size")
CGROUP_LIMITS = ("memory", "cpu", "processes")
"""The limits only a cgroup gives fully; without one, ``allow_rlimits_only`` is needed."""
NONE = "none"
MECHANISMS = ("cgroup_v1", "cgroup_v2", "rlimit", "docker", NONE)
"""Every value the ``mechanism`` label of the gauge can take."""


@dataclass(frozen=True)
class EnforcedLimit:
    """One limit of one language's sandboxes and what enforces it (``"none"``: nothing)."""

    language: Language
    limit: str
    mechanism: str

    @property
    def enforced(self) -> bool:
        return self.mechanism != NONE


def for_bubblewrap(
    cgroup_version: int | None, languages: Iterable[Language]
) -> list[EnforcedLimit]:
    """The mechanisms of bubblewrap sandboxes, with cgroups of ``cgroup_version`` (1 or 2)
    or without any (None)."""
    result: list[EnforcedLimit] = []
    for language in languages:
        if cgroup_version is not None:
            cgroup = f"cgroup_v{cgroup_version}"
            mechanisms = {"memory": cgroup, "cpu": cgroup, "processes": cgroup}
        else:
            mechanisms = {
                "memory": "rlimit" if language == "python" else NONE,
                "cpu": NONE,
                "processes": "rlimit",
            }
        mechanisms |= {"open_files": "rlimit", "file_size": "rlimit"}
        result += [EnforcedLimit(language, limit, mechanisms[limit]) for limit in LIMITS]
    return result


def for_docker(languages: Iterable[Language]) -> list[EnforcedLimit]:
    """The Docker engine applies every limit to the container (its cgroup and ulimits)."""
    return [EnforcedLimit(language, limit, "docker") for language in languages for limit in LIMITS]


def describe(limits: Iterable[EnforcedLimit]) -> str:
    """One log line: ``python: memory=cgroup_v2 cpu=cgroup_v2 ...; nodejs: ...``."""
    by_language: dict[str, list[str]] = {}
    for item in limits:
        by_language.setdefault(item.language, []).append(f"{item.limit}={item.mechanism}")
    return "; ".join(f"{language}: {' '.join(parts)}" for language, parts in by_language.items())
