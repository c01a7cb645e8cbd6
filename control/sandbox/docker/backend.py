"""The Docker sandbox backend: one container per sandbox, from a per-language runner image.

Each sandbox is a container started with no network, a read-only root, a size-capped tmpfs
``/tmp``, every capability dropped, ``no-new-privileges``, the engine's default seccomp
profile, an unprivileged user, and pids/memory(+swap)/CPU limits (:mod:`.engine`).
The runner inside speaks the same frames as under bubblewrap, over the container's own
stdin/stdout attached through the engine (:mod:`.attach`): no bind mounts, so the
images also serve a control plane that itself runs in a container. The one exception is
package folders (``sandbox.package_dirs`` and a deployed function's dependencies), bound
read-only at the same path: they are paths on the engine's host, so a control plane in a
container must see them at that same path (docker-compose.yml does). The engine may deliver a
script's raw fd 1/2 bytes (container stderr) after the call's result (container stdout), so
the runners are started with ``--end-marker`` and a call ends once its marker has come
through stderr, with everything before it delivered as the call's logs.

The blocking SDK runs in threads and only when a sandbox is created or removed; a call is
the runner pipe alone. Containers are labelled with their owner (:mod:`.owner`):
``start()`` removes what a dead predecessor left behind, ``close()`` removes our own, and
the engine closes a runner's stdin when its owner dies, so the runner exits by itself.
When the engine goes away (stopped, restarted), sandboxes die with it and their removal
fails; the first sandbox started once it answers again removes every container of ours
that no live sandbox owns (``_sweep``), so a restarted engine keeps none of the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ...config import SandboxConfig
from ...errors import CallError, SandboxError
from ...vocabulary import (
    JSON,
    LANGUAGES,
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
from . import engine
from .attach import EndMarkerScanner, open_attached_streams
from .cgroup import MemoryCgroup, find_memory_cgroup
from .owner import Owner

log = logging.getLogger(__name__)

# The Node runner gets its channel on fds 3/4 (--fds) so that raw writes to fd 1 land on
# stderr, which is captured as logs; the Python runner moves its channel off fd 0/1 itself.
# --end-marker: each call's last frame is preceded by a marker line on stderr (Node gets
# a private copy of stderr on fd 5 for it, as it cannot dup one itself).
RUNNER_COMMANDS: dict[Language, tuple[str, ...]] = {
    "python": ("python3", "-I", "-S", "/opt/reflow/python_runner.py", "--end-marker"),
    "nodejs": (
        "sh",
        "-c",
        "exec 3<&0 4>&1 5>&2 </dev/null >&2 && "
        "exec node /opt/reflow/node_runner.js --fds 3,4 --end-marker=5",
    ),
}
STDERR_TAIL = 2048
MARKER_WAIT = 2.0  # longest wait for a call's end marker (a script may have closed fd 2)
MARKER_MARGIN = 0.05  # the wait always ends this long before the call's own deadline


class DockerSandbox(Sandbox):
    """One runner in one container; the container is removed when the sandbox closes."""

    def __init__(
        self, backend: DockerBackend, language: Language, launched: engine.Launched
    ) -> None:
        self.language = language
        self.container_id = launched.container_id
        self.sandbox_id = f"docker-{launched.container_id[:12]}"
        self._backend = backend
        self._launched = launched
        self._memory: MemoryCgroup | None = (
            find_memory_cgroup(launched.host_pid) if launched.host_pid else None
        )
        self._stderr_tail = bytearray()
        self._markers = EndMarkerScanner()
        self._marker_seen = 0
        self._marker_arrived = asyncio.Event()
        self._call_deadline = 0.0
        self._transport: asyncio.BaseTransport | None = None
        self._runner: RunnerClient | None = None
        self._closed = False
        self._close_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the attached streams and wait for the runner's ``ready``."""
        runner = self._runner = RunnerClient(
            max_output_bytes=self._backend.settings.max_output_bytes,
            death_report=self._death_report,
            flush_side_channel=self._await_end_marker,
            label=f"the {self.language} runner in container {self.container_id[:12]}",
        )
        self._transport = await open_attached_streams(
            self._launched.sock, runner, on_stderr=self._stderr
        )
        await runner.wait_ready(self._backend.settings.start_timeout)

    @property
    def alive(self) -> bool:
        return not self._closed and self._runner is not None and self._runner.retire_reason is None

    @property
    def retire_reason(self) -> str | None:
        if self._closed or self._runner is None:
            return "crashed"
        return self._runner.retire_reason

    def take_stray_frames(self) -> int:
        return self._runner.take_stray_frames() if self._runner is not None else 0

    def _client(self) -> RunnerClient:
        if self._runner is None or self._closed:
            raise SandboxError("crashed", f"sandbox {self.sandbox_id} is closed")
        return self._runner

    async def load(self, actor: ActorSource) -> Mapping[str, JSON]:
        try:
            return await self._client().load(actor, self._backend.settings.call_timeout)
        except CallError as error:
            await self._dispose_after(error)
            raise

    async def call(
        self,
        context: CallContext,
        state: StateHandler,
        events: EventSink,
        *,
        timeout: float,
    ) -> dict[str, JSON]:
        self._call_deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await self._client().call(context, state, events, timeout=timeout)
        except CallError as error:
            await self._dispose_after(error)
            raise

    async def _dispose_after(self, error: CallError) -> None:
        # The runner client never kills: a runner that timed out or broke a limit is
        # removed here, so the caller gets a dead sandbox as the interface promises.
        if error.destroys_sandbox:
            await self.close()

    async def _stderr(self, data: bytes) -> None:
        """The container's stderr: raw writes of the script (logs), the runner's end-of-call
        markers, or a dying runner's last words (kept for the error message)."""
        for part in self._markers.feed(data):
            if isinstance(part, int):
                self._marker_seen = max(self._marker_seen, part)
                self._marker_arrived.set()
            else:
                await self._capture(part)

    async def _capture(self, data: bytes) -> None:
        self._stderr_tail += data
        del self._stderr_tail[:-STDERR_TAIL]
        if self._runner is not None:
            await self._runner.on_capture(data)

    async def _await_end_marker(self) -> None:
        """Called by the runner client at the call's last frame: wait (bounded) until the
        call's end marker came through stderr, so all the call wrote raw is delivered."""
        runner = self._runner
        if runner is None or self._marker_seen >= runner.call_id:
            return
        loop = asyncio.get_running_loop()
        budget = min(MARKER_WAIT, self._call_deadline - loop.time() - MARKER_MARGIN)
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                while self._marker_seen < runner.call_id:
                    self._marker_arrived.clear()
                    await self._marker_arrived.wait()
        except TimeoutError:
            log.debug("%s: no end marker for call %d", self.sandbox_id, runner.call_id)

    async def _death_report(self) -> tuple[ErrorKind, str]:
        """Why the runner's stream ended: the engine knows of memory-limit kills."""
        if self._closed:
            return "crashed", f"sandbox {self.sandbox_id} was closed"
        state = await asyncio.to_thread(engine.exit_state, self._backend.client, self.container_id)
        if state.get("OOMKilled"):
            return "memory", (
                f"the sandbox went over its {self._backend.settings.memory_mb} MB memory limit "
                "and was killed"
            )
        if not state:
            return "crashed", (
                f"the runner's connection ended and the Docker engine does not answer "
                f"(stopped or restarting?): sandbox {self.sandbox_id} is lost"
            )
        code = state.get("ExitCode")
        detail = f"the runner exited (container exit code {code})"
        tail = self._stderr_tail.decode("utf-8", "replace").strip()
        if tail:
            detail += f"; its last output: {tail[-500:]}"
        return "crashed", detail

    @property
    def pids(self) -> list[int]:
        """Host pids of every process in the container (from its cgroup; [] if unknown)."""
        return self._memory.pids() if self._memory is not None else []

    def memory_usage(self) -> int | None:
        return self._memory.usage() if self._memory is not None else None

    async def close(self) -> None:
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._backend.forget(self)
            if self._transport is not None:
                self._transport.close()
            else:
                self._launched.sock.close()
            try:
                await asyncio.to_thread(engine.remove, self._backend.client, self.container_id)
            except Exception as error:
                # The engine is away (stopped, restarting): the next sandbox started after
                # it is back removes what it still lists of ours (DockerBackend._sweep).
                self._backend.engine_lost = True
                log.warning("could not remove container %s: %s", self.container_id[:12], error)


class DockerBackend(Backend):
    """Sandboxes as containers of the local Docker engine (``sandbox.backend: docker``)."""

    name = "docker"

    def __init__(self, settings: SandboxConfig, *, owner: Owner | None = None) -> None:
        self.settings = settings
        self.owner = owner or Owner.current()
        self._client: Any = None
        self._sandboxes: set[DockerSandbox] = set()
        self._launching: set[str] = set()  # names of containers being created
        self.reaped: list[str] = []
        self.engine_lost = False  # a container could not be removed or started
        self.swept: list[str] = []  # ids removed after the engine came back

    @property
    def client(self) -> Any:
        if self._client is None:
            raise SandboxError("unavailable", "the docker backend is not started")
        return self._client

    async def start(self) -> None:
        """Reach the engine, check both runner images, then reap dead owners' containers."""
        client = await asyncio.to_thread(engine.connect, self.settings.docker.docker_host)
        try:
            for language in LANGUAGES:
                image = engine.image_for(self.settings, language)
                runner = engine.RUNNER_FILES[language]
                await asyncio.to_thread(engine.check_image, client, image, runner)
            self.reaped = await asyncio.to_thread(engine.reap, client, self.owner)
        except BaseException:
            client.close()
            raise
        if self.reaped:
            log.info("removed %d containers of dead control planes", len(self.reaped))
        self._client = client

    async def spawn(self, language: Language, *, package_dirs: Sequence[str] = ()) -> DockerSandbox:
        name = f"reflow-sandbox-{language}-{uuid.uuid4().hex[:12]}"
        self._launching.add(name)
        try:
            launched = await asyncio.to_thread(
                engine.launch,
                self.client,
                self.settings,
                language,
                RUNNER_COMMANDS[language],
                self.owner.labels(),
                name,
                [*self.settings.package_dirs, *package_dirs],
            )
        except BaseException:
            self.engine_lost = True
            raise
        else:
            sandbox = DockerSandbox(self, language, launched)
            self._sandboxes.add(sandbox)
        finally:
            self._launching.discard(name)
        if self.engine_lost:
            await self._sweep()
        try:
            await sandbox.connect()
        except BaseException as error:
            await sandbox.close()
            if isinstance(error, SandboxError):
                image = engine.image_for(self.settings, language)
                raise SandboxError(
                    "unavailable", f"{error.message} (image {image})", details=error.details
                ) from None
            raise
        return sandbox

    async def _sweep(self) -> None:
        """After the engine was away: remove our containers that no live sandbox (or one
        being created) owns. The engine may have been restarted and still list the
        containers of sandboxes that died with it."""
        keep = {sandbox.container_id for sandbox in self._sandboxes} | self._launching
        try:
            removed = await asyncio.to_thread(engine.reap_untracked, self.client, self.owner, keep)
        except Exception as error:
            log.warning("could not list this control plane's containers: %s", error)
            return
        self.engine_lost = False
        if removed:
            log.info("removed %d containers left from before the engine came back", len(removed))
            self.swept += removed

    def enforced_limits(self) -> list[EnforcedLimit]:
        return enforced.for_docker(LANGUAGES)

    def forget(self, sandbox: DockerSandbox) -> None:
        self._sandboxes.discard(sandbox)

    async def close(self) -> None:
        """Remove every container this backend started (also ones it lost track of)."""
        if self._client is None:
            return
        sandboxes = list(self._sandboxes)
        await asyncio.gather(*(sandbox.close() for sandbox in sandboxes), return_exceptions=True)
        try:
            await asyncio.to_thread(engine.reap, self._client, self.owner, mine=True)
        except Exception:
            log.exception("could not remove this control plane's containers")
        client, self._client = self._client, None
        client.close()
