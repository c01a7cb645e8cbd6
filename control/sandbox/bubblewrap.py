"""The namespace backend: each sandbox is a runner under ``bwrap`` (Debian's bubblewrap).

What a sandbox gets, and why:

- every namespace unshared (user, pid, net, ipc, uts, cgroup, mount): its own
  loopback only, its own ``/proc`` showing only its own processes;
- a host uid of its own (``bwrap`` runs as ``UID_BASE + slot``, uid 65534 inside):
  never host root, and ``RLIMIT_NPROC`` counts per sandbox (see ``limits.py``);
- a root filesystem of nothing but, read-only: the interpreter binary and what
  it needs, asked of the interpreter on this host (``host_view.py``: the folders of
  the libraries it links, Python's stdlib, the folders Debian's Node loads its
  builtins from), the runner file, configured ``package_dirs``;
  plus a size-capped private tmpfs ``/tmp`` and a minimal ``/dev``; the root and
  ``/dev`` are remounted read-only, so ``/tmp`` is the only writable place;
- a cleared environment (``--clearenv``): no server secret or Redis password;
- ``--new-session``, ``--die-with-parent``, ``--cap-drop ALL``, no_new_privs (bwrap
  always sets it), and the seccomp filter of ``seccomp.py``;
- memory, CPU, process, file and core limits from ``limits.py``.

The runner speaks frames over a socket pair passed as an extra descriptor; its
fd 1/2 lead to a second socket pair whose bytes become log events, so nothing a
script writes can corrupt the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from subprocess import Popen

from ..config import SandboxConfig
from ..errors import CallError, SandboxError
from ..runners import NODE_RUNNER, PYTHON_RUNNER
from ..vocabulary import (
    JSON,
    ActorSource,
    CallContext,
    ErrorKind,
    EventSink,
    Language,
    StateHandler,
)
from . import enforced, seccomp
from .base import Backend, Sandbox
from .enforced import EnforcedLimit
from .host_view import HostLayout, missing_folders
from .limits import (
    CGROUP_ROOT,
    CgroupManager,
    CgroupsUnusable,
    Limits,
    SandboxCgroup,
    descendants,
    prlimit_command,
    rss_bytes,
)
from .runner_client import RunnerClient

log = logging.getLogger(__name__)

RUNNER_DIR = "/runner"
SANDBOX_UID = 65534
UID_BASE = 1_900_000_000
"""Host uids of sandboxes: ``UID_BASE + (pid % 4096) * 4096 + slot``, unused by any account."""
READY_TIMEOUT = 15.0
_MEMORY_SIGNS = (
    "heap out of memory",
    "Reached heap limit",
    "MemoryError",
    "Cannot allocate memory",
)
# Native backtrace lines (Node's abort report) that would hide the message above them.
_BACKTRACE = re.compile(r"^\s*(\d+: 0x[0-9a-f]+|-{3,} Native stack trace)")
_PROBED: set[object] = set()
"""Views (interpreter, bwrap argv, cgroup version) whose sandbox started in this process."""


UIDS_PER_PROCESS = 4096


def uid_base(pid: int, uid_map: str) -> int:
    """The first of this control plane's :data:`UIDS_PER_PROCESS` sandbox uids.

    ``uid_map`` is the text of ``/proc/self/uid_map`` (lines ``inside outside count``).
    On a host (the whole 32-bit range mapped) it is ``UID_BASE + (pid % 4096) * 4096``:
    unused by any account and distinct across control planes. In a user namespace that
    maps fewer ids, e.g. a Kubernetes pod with ``hostUsers: false`` (65536 ids, see
    k8s/base/control-plane.yaml), those uids do not exist and setuid() to them fails;
    there the sandboxes take the 4096 ids just below 65534 (``nobody``) of the largest
    mapped range, which no account of the image uses and which the runtime already
    keeps apart from every other pod. Raises SandboxError when no range is large enough.
    """
    preferred = UID_BASE + (pid % 4096) * UIDS_PER_PROCESS
    ranges: list[tuple[int, int]] = []
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) == 3:
            ranges.append((int(fields[0]), int(fields[2])))
    if not ranges or any(
        first <= preferred and preferred + UIDS_PER_PROCESS <= first + count
        for first, count in ranges
    ):
        return preferred
    first, count = max(ranges, key=lambda r: r[1])
    top = min(first + count, 65534)
    if top - UIDS_PER_PROCESS <= first:
        raise SandboxError(
            "unavailable",
            f"this user namespace maps too few uids for sandboxes (uid_map: {uid_map.strip()!r});"
            f" {UIDS_PER_PROCESS} above root are needed",
        )
    return top - UIDS_PER_PROCESS


def _own_uid_map() -> str:
    try:
        return Path("/proc/self/uid_map").read_text()
    except OSError:
        return ""


class _UidPool:
    """Host uids for sandboxes, one per live sandbox, distinct across control planes.

    Unused uids are handed out first, then the one freed longest ago: a killed sandbox's
    namespace init is reaped by the host's init, which may take a while, and until then it
    still counts against its uid's ``RLIMIT_NPROC``.
    """

    def __init__(self) -> None:
        self._base: int | None = None
        self._free: deque[int] = deque()
        self._next = 0

    def take(self) -> int:
        if self._base is None:  # the first sandbox, not import time: forks get their own
            self._base = uid_base(os.getpid(), _own_uid_map())
        if self._next < UIDS_PER_PROCESS:
            self._next += 1
            return self._base + self._next - 1
        if self._free:
            return self._free.popleft()
        raise SandboxError("unavailable", "no free sandbox uid (4096 sandboxes alive)")

    def give_back(self, uid: int) -> None:
        self._free.append(uid)


_UIDS = _UidPool()


def _launch(argv: list[str], capture_fd: int, pass_fds: tuple[int, ...], uid: int) -> Popen[bytes]:
    """Fork and exec bwrap as the sandbox's host uid, in a session of its own.

    Synchronous on purpose: fork+exec takes about a millisecond, as in asyncio's own
    subprocess support, and exit is watched with a pidfd instead of a child watcher
    thread. uid/gid are switched by ``_posixsubprocess`` in C, no ``preexec_fn``.
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=capture_fd,
        stderr=capture_fd,
        pass_fds=pass_fds,
        env={"PATH": "/usr/bin:/bin"},
        user=uid,
        group=uid,
        extra_groups=[],
        start_new_session=True,
    )


class BubblewrapSandbox(Sandbox):
    """One runner process under bwrap, with its cgroup, uid and socket pairs."""

    def __init__(
        self,
        backend: BubblewrapBackend,
        language: Language,
        sandbox_id: str,
        process: Popen[bytes],
        uid: int,
        cgroup: SandboxCgroup | None,
    ) -> None:
        self.language = language
        self.sandbox_id = sandbox_id
        self._backend = backend
        self._process = process
        self._uid = uid
        self._cgroup = cgroup
        self._exited = asyncio.Event()
        self._pidfd = -1
        self._closed = False
        self._capture_tail = b""
        self._capture_task: asyncio.Task[None] | None = None
        self._capture: socket.socket | None = None
        self._capture_chunks: list[bytes] = []
        self._capture_ready = asyncio.Event()
        self._capture_lock = asyncio.Lock()
        self._client: RunnerClient | None = None
        self._oom_before = 0
        self.pids: list[int] = [process.pid]
        self.metadata: Mapping[str, JSON] = {}

    # -- start-up -----------------------------------------------------------------------

    async def _start(self, proto: socket.socket, capture: socket.socket, max_output: int) -> None:
        loop = asyncio.get_running_loop()
        self._pidfd = os.pidfd_open(self._process.pid)
        loop.add_reader(self._pidfd, self._on_exit)
        client = self._client = RunnerClient(
            max_output_bytes=max_output,
            death_report=self._death_report,
            flush_side_channel=self._drain_capture,
            label=f"{self.language} sandbox {self.sandbox_id}",
        )
        await loop.create_unix_connection(lambda: client, sock=proto)
        capture.setblocking(False)
        self._capture = capture
        loop.add_reader(capture.fileno(), self._on_capture_readable)
        self._capture_task = asyncio.create_task(self._pump_capture())
        # Move bwrap into the sandbox's cgroups while it starts (in a thread: each write
        # waits for an RCU grace period), so that the processes it creates are born
        # inside; the check after "ready" moves any that were created before the move.
        joining = None
        if self._cgroup is not None:
            joining = asyncio.ensure_future(
                asyncio.to_thread(self._cgroup.add, [self._process.pid])
            )
        try:
            await self._client.wait_ready(READY_TIMEOUT)
        finally:
            if joining is not None:
                await joining
        # Only trusted code (bwrap, the runner) has run so far; whatever the script starts
        # later is born in the cgroups.
        self.pids = descendants(self._process.pid)
        if self._cgroup is not None:
            self._cgroup.add(self.pids)
            self._oom_before = self._cgroup.oom_kills()

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._process.poll()
        self._exited.set()

    # The capture socket (the runner's fd 1/2): bytes are read synchronously when
    # the socket turns readable and delivered in order by one task under a lock,
    # which _drain_capture also takes, so a call ends only after all it wrote.

    def _on_capture_readable(self) -> None:
        self._read_capture()
        self._capture_ready.set()

    def _read_capture(self) -> None:
        while self._capture is not None:
            try:
                data = self._capture.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self._capture.fileno())
                self._capture.close()
                self._capture = None
                return
            self._capture_tail = (self._capture_tail + data)[-4096:]
            self._capture_chunks.append(data)

    async def _deliver_capture(self) -> None:
        async with self._capture_lock:
            while self._capture_chunks:
                data = self._capture_chunks.pop(0)
                if self._client is not None:
                    await self._client.on_capture(data)

    async def _pump_capture(self) -> None:
        while True:
            await self._capture_ready.wait()
            self._capture_ready.clear()
            await self._deliver_capture()

    async def _drain_capture(self) -> None:
        """Deliver what the runner wrote to fd 1/2 before its last frame.

        Those bytes are already queued on the capture socket when the result
        arrives (the runner wrote them first); they belong to the call. They have also
        been read already: the epoll round that reported the result reported the
        capture socket too (or an earlier one did), and its reader callback
        (:meth:`_on_capture_readable`) ran in that round's I/O phase, while this
        coroutine resumes from a future only after it. So no read here: almost every
        call writes nothing raw, and an empty read is a syscall and an exception.
        """
        if self._capture_chunks or self._capture_lock.locked():
            # Only then: the lock's acquire and release cost more than the rest of
            # a call's capture handling, and almost every call writes nothing raw.
            await self._deliver_capture()

    async def _death_report(self) -> tuple[ErrorKind, str]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._exited.wait()
        self._read_capture()  # the runner's last words (e.g. V8's out-of-memory report)
        tail = self._capture_tail.decode("utf-8", "replace")
        oom = self._cgroup is not None and self._cgroup.oom_kills() > self._oom_before
        if oom or any(sign in tail for sign in _MEMORY_SIGNS):
            return "memory", (
                f"the sandbox ran out of memory (limit {self._backend.settings.memory_mb} MiB)"
            )
        code = self._process.returncode
        how = (
            f"killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with status {code}"
        )
        lines = [line for line in tail.strip().splitlines() if not _BACKTRACE.match(line)]
        detail = lines[-3:]
        return "crashed", f"the runner {how}" + (f": {' | '.join(detail)}" if detail else "")

    # -- the Sandbox interface ----------------------------------------------------------

    @property
    def alive(self) -> bool:
        return (
            not self._closed
            and not self._exited.is_set()
            and self._client is not None
            and self._client.retire_reason is None
        )

    @property
    def retire_reason(self) -> str | None:
        if self._closed or self._exited.is_set() or self._client is None:
            return "crashed"
        return self._client.retire_reason

    def take_stray_frames(self) -> int:
        return self._client.take_stray_frames() if self._client is not None else 0

    async def load(self, actor: ActorSource) -> Mapping[str, JSON]:
        assert self._client is not None
        try:
            self.metadata = await self._client.load(actor, self._backend.settings.call_timeout)
        except CallError as error:
            if error.destroys_sandbox:
                await self.close()
            raise
        return self.metadata

    def start_call(self, context: CallContext, events: EventSink) -> bool:
        if self._client is None or self._closed:
            return False
        return self._client.start_call(context, events)

    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        assert self._client is not None
        try:
            return await self._client.call(context, state, events, timeout=timeout)
        except CallError as error:
            if error.destroys_sandbox or self._client.broken:
                await self.close()
            raise

    def memory_usage(self) -> int | None:
        if self._closed:
            return None
        # Resident memory of the sandbox's processes; the cgroup's figure when larger
        # (it also counts page cache and /tmp files, but on cgroup v1 without charge
        # moving it misses what the runner allocated before it joined).
        rss = rss_bytes(descendants(self._process.pid))
        usage = self._cgroup.memory_usage() if self._cgroup is not None else None
        return max(rss, usage or 0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill_all()
        if self._pidfd >= 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._exited.wait()
            if not self._exited.is_set():
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
        self._process.poll()
        if self._capture_task is not None:
            self._capture_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._capture_task
        if self._client is not None:
            self._client.close_transport()
        if self._capture is not None:
            asyncio.get_running_loop().remove_reader(self._capture.fileno())
            self._capture.close()
            self._capture = None
        if self._cgroup is not None:
            for _ in range(50):
                if self._cgroup.remove():
                    break
                self._cgroup.kill_all()
                await asyncio.sleep(0.02)
        _UIDS.give_back(self._uid)
        self._backend._forget(self)


class BubblewrapBackend(Backend):
    """Starts sandboxes with bubblewrap; see the module docstring for what they get."""

    name = "bubblewrap"

    def __init__(
        self,
        settings: SandboxConfig,
        *,
        cgroup_root: Path = CGROUP_ROOT,
    ) -> None:
        """``cgroup_root``: where the cgroup hierarchy is mounted (tests point it at an
        empty folder to stand for a host without one)."""
        self.settings = settings
        self._cgroup_root = cgroup_root
        self._binaries: dict[Language, str] = {
            "python": settings.python_binary,
            "nodejs": settings.node_binary,
        }
        self._sandboxes: set[BubblewrapSandbox] = set()
        self._seccomp: bytes = b""
        self._cgroups: CgroupManager | None = None
        self._layout: HostLayout | None = None
        self._runner_dir: str | None = None
        self._bwrap = "bwrap"
        self._prlimit = "prlimit"
        self._python_entry = PYTHON_RUNNER.name  # or its compiled twin (see start)

    @property
    def cgroups(self) -> CgroupManager | None:
        """The cgroup manager in use, or None when running on rlimits alone."""
        return self._cgroups

    async def start(self) -> None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("unavailable", "bwrap is not installed (apt-get install bubblewrap)")
        self._bwrap = bwrap
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise SandboxError("unavailable", "prlimit is missing (apt-get install util-linux)")
        self._prlimit = prlimit
        try:
            self._seccomp = await asyncio.to_thread(seccomp.compile_filter)
        except (OSError, ImportError) as error:
            raise SandboxError("unavailable", f"cannot build the seccomp filter: {error}") from None
        self._runner_dir = tempfile.mkdtemp(prefix="reflow-microsandbox-runners-")
        os.chmod(self._runner_dir, 0o755)
        for source in (PYTHON_RUNNER, NODE_RUNNER):
            target = Path(self._runner_dir) / source.name
            shutil.copyfile(source, target)
            target.chmod(0o644)
        if shutil.which(self._binaries["python"]) is not None:
            await asyncio.to_thread(self._compile_python_runner)
        try:
            await self._prepare()
        except BaseException:
            await self.close()
            raise

    async def _prepare(self) -> None:
        """Resolve each interpreter's view, set up cgroups, and start one sandbox of each.

        Raises:
            SandboxError: ``unavailable``, naming what this host lacks: a package folder,
                an interpreter that does not run, cgroups (unless ``allow_rlimits_only``),
                or a sandbox that does not start (with the interpreter's own error).
        """
        assert self._runner_dir is not None
        missing = await asyncio.to_thread(missing_folders, self.settings.package_dirs)
        if missing:
            raise SandboxError(
                "unavailable",
                f"sandbox.package_dirs: no such folder on this host: {', '.join(missing)}",
            )
        layout = HostLayout(self._runner_dir)
        for language, binary in self._binaries.items():
            if shutil.which(binary) is None:
                key = "python_binary" if language == "python" else "node_binary"
                warm = self.settings.pool.for_language(language).min_instances
                if warm > 0:
                    raise SandboxError(
                        "unavailable",
                        f"the {language} interpreter {binary} is not installed here, and "
                        f"sandbox.pool.{language}.min_instances is {warm}: install it, point "
                        f"sandbox.{key} at it, or set min_instances to 0",
                    )
                log.warning(
                    "%s interpreter %s not found: %s sandboxes unavailable (sandbox.%s)",
                    language, binary, language, key,
                )  # fmt: skip
                continue
            try:
                await asyncio.to_thread(layout.add, language, binary)
            except (OSError, subprocess.SubprocessError) as error:
                said = getattr(error, "stderr", None) or error
                raise SandboxError(
                    "unavailable", f"the {language} interpreter {binary} does not run: {said}"
                ) from None
        self._layout = layout
        await asyncio.to_thread(CgroupManager.cleanup_leftovers, self._cgroup_root)
        try:
            self._cgroups = CgroupManager.create(self._cgroup_root)
        except CgroupsUnusable as error:
            if not self.settings.allow_rlimits_only:
                raise SandboxError(
                    "unavailable",
                    f"cgroups are unusable here ({error}): sandboxes would run without a CPU "
                    "limit, and Node without a memory limit. Run the service with cgroups "
                    "(cgroup v2: a systemd unit with Delegate=yes, as the Ansible role "
                    "installs it; v1: writable memory, cpu and pids hierarchies), or set "
                    "sandbox.allow_rlimits_only: true to accept rlimits alone",
                ) from None
            log.warning(
                "cgroups are unusable (%s): sandboxes get rlimits only, as "
                "sandbox.allow_rlimits_only allows: no CPU limit, no memory limit for Node",
                error,
            )
        results = await asyncio.gather(
            *(self._probe(language) for language in layout.binaries), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _probe(self, language: Language) -> None:
        """Start and close one sandbox, so that a piece the interpreter needs and the
        view lacks fails the start, in the interpreter's words, not the first call.
        Remembered per process for the same view (tests start many backends)."""
        assert self._layout is not None
        runner_dir = self._layout.runner_dir  # a fresh temporary folder per backend
        key = (
            language,
            tuple("<runners>" if a == runner_dir else a for a in self._argv(language, 0, 0)),
            self._cgroups.version if self._cgroups is not None else None,
        )
        if key in _PROBED:
            return
        try:
            sandbox = await self.spawn(language)
        except SandboxError as error:
            raise SandboxError(
                "unavailable", f"{language} sandboxes do not start on this host: {error.message}"
            ) from None
        await sandbox.close()
        _PROBED.add(key)

    def enforced_limits(self) -> list[EnforcedLimit]:
        languages = list(self._layout.binaries) if self._layout is not None else []
        version = self._cgroups.version if self._cgroups is not None else None
        return enforced.for_bubblewrap(version, languages)

    def _compile_python_runner(self) -> None:
        """Compile the Python runner once, with the sandboxes' own interpreter, so that no
        sandbox compiles it: that saves each one about 1 MB of memory and the compile time
        of its start. Without a compiled runner sandboxes start from the source."""
        assert self._runner_dir is not None
        source = Path(self._runner_dir) / PYTHON_RUNNER.name
        compiled = source.with_suffix(".pyc")
        result = subprocess.run(
            [
                self._binaries["python"], "-I", "-S", "-c",
                "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
                "dfile=sys.argv[3], doraise=True)",
                str(source), str(compiled), f"{RUNNER_DIR}/{PYTHON_RUNNER.name}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            log.warning("could not compile the Python runner: %s", result.stderr.strip())
            return
        compiled.chmod(0o644)
        self._python_entry = compiled.name

    def _argv(
        self, language: Language, fd: int, seccomp_fd: int, extra_dirs: Sequence[str] = ()
    ) -> list[str]:
        assert self._layout is not None
        layout = self._layout
        settings = self.settings
        argv = [
            self._bwrap,
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
            "--size", str(settings.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp",
        ]  # fmt: skip
        # After the private /tmp, so that a package folder below /tmp is not hidden by it.
        package_dirs = [*settings.package_dirs, *extra_dirs]
        for directory in package_dirs:
            argv += ["--ro-bind-try", directory, directory]
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
        channel = f"{fd},{fd}"
        if language == "python":
            runner = f"{RUNNER_DIR}/{self._python_entry}"
            argv += [layout.binaries[language], "-I", "-S", "-B", runner, "--fds", channel]
        else:
            heap = max(16, settings.memory_mb * 3 // 4)
            runner = f"{RUNNER_DIR}/{NODE_RUNNER.name}"
            argv += [
                layout.binaries[language],
                f"--max-old-space-size={heap}",
                "--v8-pool-size=1",
                runner,
                "--fds",
                channel,
            ]
        return argv

    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> Sandbox:
        if self._layout is None:
            raise SandboxError("unavailable", "the bubblewrap backend was not started")
        if language not in self._layout.binaries:
            raise SandboxError("unavailable", f"no {language} interpreter on this host")
        sandbox_id = f"bwrap-{uuid.uuid4().hex[:12]}"
        limits = Limits.for_language(self.settings, language)
        uid = _UIDS.take()
        cgroup: SandboxCgroup | None = None
        proto_parent, proto_child = socket.socketpair()
        capture_parent, capture_child = socket.socketpair()
        seccomp_fd = seccomp.filter_fd(self._seccomp)
        try:
            if self._cgroups is not None:
                try:
                    cgroup = self._cgroups.sandbox(sandbox_id, limits)
                except OSError as error:
                    if not self.settings.allow_rlimits_only:
                        raise SandboxError(
                            "unavailable", f"cannot create the sandbox's cgroup: {error}"
                        ) from None
                    log.warning("sandbox %s runs without a cgroup: %s", sandbox_id, error)
            argv = prlimit_command(limits, self._prlimit)
            argv += self._argv(language, proto_child.fileno(), seccomp_fd, package_dirs)
            process = _launch(argv, capture_child.fileno(), (proto_child.fileno(), seccomp_fd), uid)
        except BaseException:
            for sock in (proto_parent, capture_parent):
                sock.close()
            if cgroup is not None:
                cgroup.remove()
            _UIDS.give_back(uid)
            raise
        finally:
            proto_child.close()
            capture_child.close()
            os.close(seccomp_fd)
        sandbox = BubblewrapSandbox(self, language, sandbox_id, process, uid, cgroup)
        self._sandboxes.add(sandbox)
        try:
            max_output = self.settings.max_output_bytes
            await sandbox._start(proto_parent, capture_parent, max_output)
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    def _forget(self, sandbox: BubblewrapSandbox) -> None:
        self._sandboxes.discard(sandbox)

    async def close(self) -> None:
        sandboxes = list(self._sandboxes)
        await asyncio.gather(*(sandbox.close() for sandbox in sandboxes), return_exceptions=True)
        if self._cgroups is not None:
            self._cgroups.close()
            self._cgroups = None
        if self._runner_dir is not None:
            shutil.rmtree(self._runner_dir, ignore_errors=True)
            self._runner_dir = None
        self._layout = None
