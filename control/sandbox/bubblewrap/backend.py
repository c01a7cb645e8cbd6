"""The bubblewrap backend's process handling: one sandbox, and the backend that spawns them.

A :class:`BubblewrapSandbox` is the bwrap process with its runner client, cgroup, uid
and capture pump; the :class:`BubblewrapBackend` checks the host, prepares cgroups and
the runners, and spawns sandboxes. The pure parts are elsewhere: the command line in
:mod:`.argv`, the figures in :mod:`.limits`; what a sandbox gets is listed in the
package's docstring (:mod:`..bubblewrap`).
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from subprocess import Popen

from ...config import SandboxConfig
from ...errors import CallError, SandboxError
from ...runners import NODE_RUNNER, PYTHON_RUNNER
from ...vocabulary import (
    JSON,
    ActorSource,
    CallContext,
    ErrorKind,
    EventSink,
    Language,
    StateHandler,
)
from .. import enforced
from ..base import Backend, Sandbox
from ..enforced import EnforcedLimit
from ..runner_client import RunnerClient
from . import seccomp
from .argv import RUNNER_DIR, bwrap_argv
from .capture import CapturePump
from .cgroups import CGROUP_ROOT, CgroupManager, CgroupsUnusable, SandboxCgroup
from .host_view import HostLayout, missing_folders
from .limits import Limits
from .procfs import descendants, rss_bytes
from .rlimits import prlimit_command
from .uids import UIDS

log = logging.getLogger(__name__)

_PROBED: set[object] = set()
"""Views (interpreter, bwrap argv, cgroup version) whose sandbox started in this process."""

_MEMORY_SIGNS = (
    "heap out of memory",
    "Reached heap limit",
    "MemoryError",
    "Cannot allocate memory",
)
# Native backtrace lines (Node's abort report) that would hide the message above them.
_BACKTRACE = re.compile(r"^\s*(\d+: 0x[0-9a-f]+|-{3,} Native stack trace)")


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
        self._capture = CapturePump(self._on_capture)
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
            flush_side_channel=self._capture.drain,
            label=f"{self.language} sandbox {self.sandbox_id}",
        )
        await loop.create_unix_connection(lambda: client, sock=proto)
        self._capture.start(capture)
        # Move bwrap into the sandbox's cgroups while it starts (in a thread: each write
        # waits for an RCU grace period), so that the processes it creates are born
        # inside; the check after "ready" moves any that were created before the move.
        joining = None
        if self._cgroup is not None:
            joining = asyncio.ensure_future(
                asyncio.to_thread(self._cgroup.add, [self._process.pid])
            )
        try:
            await self._client.wait_ready(self._backend.settings.start_timeout)
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

    async def _on_capture(self, data: bytes) -> None:
        """Raw bytes the runner's processes wrote to fd 1/2 (see :mod:`.capture`)."""
        if self._client is not None:
            await self._client.on_capture(data)

    async def _death_report(self) -> tuple[ErrorKind, str]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._exited.wait()
        self._capture.read()  # the runner's last words (e.g. V8's out-of-memory report)
        tail = self._capture.tail.decode("utf-8", "replace")
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

    def set_cpu_share(self, share: float) -> None:
        if self._cgroup is not None and not self._closed:
            try:
                self._cgroup.set_cpu_share(share)
                settings = self._backend.settings
                if settings.cpu_limit_per_actor:
                    self._cgroup.set_cpu_quota(settings.cpu_limit * share)
            except OSError as error:  # the cgroup went with its sandbox
                log.debug("%s: cpu weight not set: %s", self.sandbox_id, error)

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
        await self._capture.stop()
        if self._client is not None:
            self._client.close_transport()
        self._capture.close()
        if self._cgroup is not None:
            for _ in range(50):
                if self._cgroup.remove():
                    break
                self._cgroup.kill_all()
                await asyncio.sleep(0.02)
        UIDS.give_back(self._uid)
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
        return bwrap_argv(
            self._bwrap,
            self._layout,
            self.settings,
            language,
            python_entry=self._python_entry,
            fd=fd,
            seccomp_fd=seccomp_fd,
            extra_dirs=extra_dirs,
        )

    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> Sandbox:
        if self._layout is None:
            raise SandboxError("unavailable", "the bubblewrap backend was not started")
        if language not in self._layout.binaries:
            raise SandboxError("unavailable", f"no {language} interpreter on this host")
        sandbox_id = f"bwrap-{uuid.uuid4().hex[:12]}"
        limits = Limits.for_language(self.settings, language)
        uid = UIDS.take()
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
            UIDS.give_back(uid)
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
