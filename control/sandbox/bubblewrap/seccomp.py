"""The sandbox seccomp filter: syscalls a script never needs, denied with EPERM.

Compiled once per backend with pyseccomp (ctypes over Debian's libseccomp2) into
classic BPF, which ``bwrap --seccomp FD`` installs right before it executes the
runner, so bwrap's own namespace set-up is not affected. Everything not listed is
allowed: the namespaces, capabilities and no_new_privs already bound what a script
can do; this list removes kernel attack surface that none of it needs.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

DENIED_SYSCALLS: tuple[str, ...] = (
    # debugging and other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # namespaces and mounts
    "mount", "umount2", "unshare", "setns", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # keyrings
    "keyctl", "add_key", "request_key",
    # kernel programmability and introspection
    "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # kernel modules and kexec
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    # clocks
    "clock_settime", "settimeofday", "adjtimex", "clock_adjtime", "stime",
    # the machine
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "personality", "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "vhangup", "nfsservctl", "uselib",
)  # fmt: skip

# clone(2) with any of these flags creates a namespace: refused like unshare(2).
_CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def compile_filter(denied: Iterable[str] = DENIED_SYSCALLS) -> bytes:
    """Build the filter and return its BPF program (what ``bwrap --seccomp`` reads).

    Syscalls this libseccomp does not know on this architecture are skipped.
    ``clone3`` answers ENOSYS, so libc falls back to ``clone``, whose flags the
    filter can inspect (``clone3`` passes them in memory, out of BPF's reach).
    """
    import pyseccomp

    deny = pyseccomp.ERRNO(errno.EPERM)
    seccomp_filter = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in denied:
        try:
            seccomp_filter.add_rule(deny, name)
        except (OSError, ValueError):
            continue  # not a syscall on this architecture
    for flag in _CLONE_NAMESPACE_FLAGS:
        seccomp_filter.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    seccomp_filter.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("reflow-microsandbox-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "rb") as file:
            seccomp_filter.export_bpf(file)
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, size)
    finally:
        os.close(fd)


def filter_fd(program: bytes) -> int:
    """A fresh readable descriptor holding ``program``, for one ``bwrap --seccomp`` run.

    A pipe: the program is a few KiB, far below the pipe buffer, and bwrap reads
    it to the end once. The caller closes the descriptor after the spawn.
    """
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os.close(write_fd)
    return read_fd
