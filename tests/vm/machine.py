"""Boots the Debian 12 image of scripts/build-vm-image.sh under qemu and runs one job in it.

The guest (Debian's own kernel, systemd as PID 1, pure cgroup v2) mounts the job folder
shared over 9p, runs its ``run`` script, writes ``status`` there and prints
``REFLOW-VM-DONE status=N`` on the serial console before it powers off. Software
emulation (TCG) only: KVM does not work on these machines
(../shared/notes/debian12-vm-on-these-machines.md has the measured facts).
"""

from __future__ import annotations

import contextlib
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.support import deploy_lock

QEMU = "qemu-system-x86_64"
VM_LOCK = Path("/tmp/msb-vm.lock")
"""Every qemu run on this machine takes it (RULES: one VM at a time on a 2-core machine)."""
MARKER = re.compile(r"REFLOW-VM-DONE status=(\d+)")
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet loglevel=4 systemd.show_status=error "
    "systemd.unified_cgroup_hierarchy=1"
)


def qemu_unusable_reason() -> str | None:
    """Why no VM can run here at all (None when qemu can)."""
    if platform.machine() != "x86_64":
        return f"the Debian 12 VM image is amd64 and this machine is {platform.machine()}"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (scripts/setup.sh installs qemu-system-x86)"
    probe = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"{QEMU} does not run: {probe.stderr.strip()}"
    return None


@contextlib.contextmanager
def vm_lock() -> Iterator[None]:
    """Hold /tmp/msb-vm.lock, also when run under ``flock /tmp/msb-vm.lock pytest ...``
    (tests/deploy/support.py's lock, which reuses an inherited descriptor)."""
    with deploy_lock(VM_LOCK):
        yield


def build_image(repo: Path, timeout: float = 900) -> Path:
    """Run scripts/build-vm-image.sh (cached); returns the image folder.

    Raises:
        RuntimeError: the build failed; the message holds its output's tail.
    """
    done = subprocess.run(
        [str(repo / "scripts" / "build-vm-image.sh")],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"build-vm-image.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Share:
    """A host folder the guest mounts over 9p by ``tag``."""

    tag: str
    path: Path
    read_only: bool


@dataclass(frozen=True)
class Outcome:
    """How a VM run ended: the guest's status (None without the end marker) and its console."""

    status: int | None
    console: str
    timed_out: bool


def boot(image: Path, shares: list[Share], console_log: Path, timeout: float) -> Outcome:
    """Boot ``image`` with the 9p ``shares`` (one tagged ``job``); wait until it powers off.

    The qemu process is killed after ``timeout`` seconds (``timed_out`` then).
    """
    argv = [
        QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2048", "-smp", "2",
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", KERNEL_ARGS,
    ]  # fmt: skip
    for share in shares:
        option = f"local,path={share.path},mount_tag={share.tag},security_model=none"
        argv += ["-virtfs", option + (",readonly=on" if share.read_only else "")]
    timed_out = False
    with console_log.open("wb") as console:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            process.kill()
            process.wait()
    text = console_log.read_bytes().decode("utf-8", "replace")
    found = MARKER.findall(text)
    return Outcome(int(found[-1]) if found else None, text, timed_out)
