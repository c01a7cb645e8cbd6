"""The bwrap command line of a sandbox, as a pure function of the host layout and settings.

No I/O: what is mounted (:func:`mounts`), the namespaces, environment and hardening
around it (:func:`bwrap_argv`), and the runner command inside (:func:`runner_command`).
The layout itself (which folders each interpreter needs) is discovered by
:mod:`.host_view`; the process is started by :mod:`.backend`. bwrap's options are
described in bwrap(1).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...config import SandboxConfig
from ...runners import NODE_RUNNER
from ...vocabulary import Language
from .host_view import HostLayout

RUNNER_DIR = "/runner"
"""Where the runner files are mounted inside every sandbox."""
SANDBOX_UID = 65534
"""The uid and gid a sandbox's processes have inside its user namespace (``nobody``)."""


def mounts(
    layout: HostLayout,
    language: Language,
    *,
    tmp_size_bytes: int,
    package_dirs: Sequence[str] = (),
) -> list[str]:
    """The bwrap options that build the sandbox's filesystem, in mount order.

    Read-only: the interpreter's folders and binary (and their symlinks), the runner
    folder at :data:`RUNNER_DIR`; fresh ``/proc``, a minimal ``/dev``, a tmpfs ``/tmp`` of
    ``tmp_size_bytes``; then the ``package_dirs`` read-only, after ``/tmp`` so that one
    below /tmp is not hidden by it (``--ro-bind-try``: a folder that vanished is skipped).
    """
    argv: list[str] = []
    for target, link in layout.symlinks:
        argv += ["--symlink", target, link]
    for directory in layout.dirs[language]:
        argv += ["--ro-bind", directory, directory]
    argv += ["--ro-bind", layout.binaries[language], layout.binaries[language]]
    for target, alias in layout.aliases.get(language, []):
        argv += ["--symlink", target, alias]
    argv += ["--ro-bind", layout.runner_dir, RUNNER_DIR]
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(tmp_size_bytes), "--tmpfs", "/tmp",
    ]  # fmt: skip
    for directory in package_dirs:
        argv += ["--ro-bind-try", directory, directory]
    return argv


def runner_command(
    binary: str, language: Language, *, python_entry: str, fd: int, memory_mb: int
) -> list[str]:
    """The runner's command line inside the sandbox; it speaks frames on ``fd``.

    ``python_entry``: the Python runner's file name in :data:`RUNNER_DIR` (its compiled
    ``.pyc`` twin when there is one). Node's heap is capped at 3/4 of ``memory_mb`` (at
    least 16 MiB) so that V8 reports running out of it before the cgroup kills it.
    """
    channel = f"{fd},{fd}"
    if language == "python":
        runner = f"{RUNNER_DIR}/{python_entry}"
        return [binary, "-I", "-S", "-B", runner, "--fds", channel]
    heap = max(16, memory_mb * 3 // 4)
    runner = f"{RUNNER_DIR}/{NODE_RUNNER.name}"
    return [binary, f"--max-old-space-size={heap}", "--v8-pool-size=1", runner, "--fds", channel]


def bwrap_argv(
    bwrap: str,
    layout: HostLayout,
    settings: SandboxConfig,
    language: Language,
    *,
    python_entry: str,
    fd: int,
    seccomp_fd: int,
    extra_dirs: Sequence[str] = (),
) -> list[str]:
    """The whole ``bwrap ... -- runner`` command of one sandbox.

    Every namespace unshared, uid/gid :data:`SANDBOX_UID`, a new session, death with the
    parent, every capability dropped, a cleared environment; the filesystem of
    :func:`mounts` with the root and ``/dev`` remounted read-only last; the seccomp
    filter read from ``seccomp_fd``; ``extra_dirs``: package folders besides
    ``settings.package_dirs`` (named to the runner by ``REFLOW_PACKAGE_DIRS`` or
    ``NODE_PATH``).
    """
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "HOME", "/tmp",
        "--setenv", "TMPDIR", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
    ]  # fmt: skip
    package_dirs = [*settings.package_dirs, *extra_dirs]
    argv += mounts(
        layout,
        language,
        tmp_size_bytes=settings.tmp_size_mb * 1024 * 1024,
        package_dirs=package_dirs,
    )
    if package_dirs:
        variable = "REFLOW_PACKAGE_DIRS" if language == "python" else "NODE_PATH"
        argv += ["--setenv", variable, ":".join(package_dirs)]
    argv += [
        "--chdir", "/tmp",
        # bwrap's root and /dev are writable tmpfs mounts: freeze them, last.
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--seccomp", str(seccomp_fd),
        "--",
    ]  # fmt: skip
    return argv + runner_command(
        layout.binaries[language],
        language,
        python_entry=python_entry,
        fd=fd,
        memory_mb=settings.memory_mb,
    )
