"""The figures a bubblewrap sandbox is limited to, derived once from the settings.

Both mechanisms read them: cgroups (:mod:`.cgroups`, where the host offers them) and
rlimits (:mod:`.rlimits`, always).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import SandboxConfig
from ...vocabulary import Language

# Processes and threads the runtime itself needs besides what the script starts:
# bwrap (outside and as the namespace's init) and the interpreter's own threads.
RUNTIME_TASKS: dict[Language, int] = {"python": 4, "nodejs": 16}


@dataclass(frozen=True)
class Limits:
    """The numbers every mechanism is derived from."""

    memory_bytes: int
    cpu_limit: float
    tasks: int
    open_files: int
    file_size_bytes: int
    address_space_bytes: int | None

    @classmethod
    def for_language(cls, settings: SandboxConfig, language: Language) -> Limits:
        memory = settings.memory_mb * 1024 * 1024
        return cls(
            memory_bytes=memory,
            cpu_limit=settings.cpu_limit,
            tasks=settings.max_processes + RUNTIME_TASKS[language],
            open_files=settings.max_open_files,
            file_size_bytes=settings.max_file_size_mb * 1024 * 1024,
            # V8 reserves large virtual ranges up front: Node is bounded by
            # --max-old-space-size and the cgroup instead.
            address_space_bytes=memory if language == "python" else None,
        )
