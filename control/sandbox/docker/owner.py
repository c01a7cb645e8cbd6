"""Which control plane owns a sandbox container, and whether that owner is gone.

Every container the Docker backend starts carries labels naming its owner: the host, the
boot, the process id and that process's start time. Two control planes may share one
engine, so a starting backend reaps only the containers whose owner is provably dead: on
this host, and either from an earlier boot, or a pid that no longer runs, or a pid that
now belongs to a different process (a different start time).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LABEL_PREFIX = "io.reflow.microsandbox."
MANAGED = LABEL_PREFIX + "managed"
OWNER = LABEL_PREFIX + "owner"
OWNER_HOST = LABEL_PREFIX + "owner-host"
OWNER_BOOT = LABEL_PREFIX + "owner-boot"
OWNER_PID = LABEL_PREFIX + "owner-pid"
OWNER_START = LABEL_PREFIX + "owner-start"
LANGUAGE = LABEL_PREFIX + "language"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]


@dataclass(frozen=True)
class Owner:
    """One control-plane process, as written into its containers' labels."""

    host: str
    boot: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, process_start_time(pid) or "unknown")

    @property
    def ident(self) -> str:
        return f"{self.host}/{self.boot[:8]}/{self.pid}/{self.start}"

    def labels(self) -> dict[str, str]:
        return {
            MANAGED: "true",
            OWNER: self.ident,
            OWNER_HOST: self.host,
            OWNER_BOOT: self.boot,
            OWNER_PID: str(self.pid),
            OWNER_START: self.start,
        }

    def is_dead_owner(self, labels: Mapping[str, str]) -> bool:
        """Whether a container with these labels belongs to a dead control plane.

        Seen from this (living) owner: containers of other hosts and of living processes
        are never reaped, nor this owner's own.
        """
        if labels.get(MANAGED) != "true" or labels.get(OWNER) == self.ident:
            return False
        if labels.get(OWNER_HOST) != self.host:
            return False
        if labels.get(OWNER_BOOT) != self.boot:
            return True
        try:
            pid = int(labels.get(OWNER_PID, ""))
        except ValueError:
            return True
        return process_start_time(pid) != labels.get(OWNER_START)
