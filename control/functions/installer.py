"""Function dependencies installed on the node, into a cache its sandboxes mount read-only.

Reflow sends dependencies as ``{"package": "*"}``. They are installed here, on the node,
never inside a sandbox (sandboxes have no network), by the package managers with
everything that would run package code switched off:

- Python: ``pip install --only-binary :all: --target <dir>/site``: wheels only, so no
  ``setup.py`` or build backend ever runs; ``<dir>/site`` joins the sandbox's
  ``sys.path`` (the runner reads ``REFLOW_PACKAGE_DIRS``).
- Node: ``npm install --ignore-scripts`` (no ``preinstall``/``install``/``postinstall``
  scripts) in ``<dir>``; ``<dir>/node_modules`` becomes the sandbox's ``NODE_PATH``.

The cache (``functions.dependency_cache``) has one folder per exact set, named after a
hash of its *lock*: what the set resolved to (pinned versions and file hashes). The
first node to install a set resolves it and stores the lock in the state store; every
other node replays that lock (``pip --require-hashes --no-deps``, ``npm ci``), so all
nodes run the same files even when ``"*"`` would resolve differently an hour later.
A folder is built under a temporary name and renamed into place when complete, so a
half-installed set is never mounted and two processes sharing a cache cannot clash.

Registries: pip and npm use their own configuration (``pip.conf``, ``PIP_*``,
``.npmrc``, ``npm_config_*`` in the server's environment) unless
``functions.pip_index_url`` / ``functions.npm_registry`` name one. The installer's
environment is the server's, minus every ``MICROSANDBOX_*`` variable (tokens, the
Redis URL). Failures raise :class:`InstallError` with the package manager's own
error lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import FunctionsConfig
from ..errors import MicroSandboxError
from ..vocabulary import Language
from . import locks
from .dependencies import Pairs, pip_requirements, set_key
from .metrics import FunctionMetrics
from .store import FunctionStore

log = logging.getLogger(__name__)

_COMPLETE = ".complete"
_NPM_CACHE = ".npm-cache"
_OUTPUT_TAIL = 16 * 1024
_MESSAGE_LIMIT = 2000
_ERROR_MARKS = ("ERROR:", "npm ERR!", "npm error", "error:")


_Work = Callable[[Path], Awaitable[None]]


class InstallError(MicroSandboxError):
    """Dependencies that could not be had; the message is the installer's own."""


@dataclass(frozen=True)
class _Run:
    returncode: int
    output: str


def traversal_problem(path: str) -> str | None:
    """Why sandboxes (other uids) could not read below ``path``, or None.

    Every existing folder from ``/`` down to ``path`` must be searchable by others.
    """
    current = Path(path)
    chain = [current, *current.parents]
    for folder in reversed(chain):
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            break
        except OSError as error:
            return f"cannot inspect {folder}: {error.strerror}"
        if not mode & stat.S_IXOTH:
            return (
                f"sandboxes cannot read the dependency cache {path}: {folder} is not "
                f"searchable by other users (mode {stat.S_IMODE(mode):04o})"
            )
    return None


def _open_up(root: Path) -> None:
    """Folders 0755, files 0644 (0755 when executable): readable by sandbox uids."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def _error_lines(output: str) -> str:
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    marked = [line for line in lines if line.lstrip().startswith(_ERROR_MARKS)]
    text = "\n".join(marked or lines[-10:])
    return text[-_MESSAGE_LIMIT:] if len(text) > _MESSAGE_LIMIT else text


class DependencyInstaller:
    """Installs dependency sets into the node's cache; one install per set at a time."""

    def __init__(
        self,
        settings: FunctionsConfig,
        store: FunctionStore,
        metrics: FunctionMetrics,
        *,
        python: str = sys.executable,
        npm: str | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._python = python
        self._npm = npm
        self.cache = Path(settings.dependency_cache)
        self._running: dict[str, asyncio.Task[str]] = {}

    def problem(self) -> str | None:
        """Why dependencies cannot be installed here (None when they can)."""
        return traversal_problem(str(self.cache))

    async def ensure(self, language: Language, pairs: Pairs) -> str:
        """The folder holding ``pairs`` installed (to mount read-only); installs it first
        when needed, joining an install of the same set already running. Cancelling the
        caller does not cancel the install. Raises :class:`InstallError`."""
        key = set_key(language, pairs)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._install(language, pairs, key))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Stop installs still running (their package managers are killed)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def prune(self, keep: set[str], older_than: float) -> int:
        """Remove cached sets not in ``keep`` and unused for ``older_than`` seconds, and
        builds left half-done (by a killed server) for twice the install timeout."""
        removed = 0
        if not self.cache.is_dir():
            return 0
        now = time.time()
        for entry in self.cache.iterdir():
            if str(entry) in keep:
                continue
            building = entry.name.startswith(".")
            if building and entry.name[1:].split("-")[0] not in ("python", "nodejs"):
                continue
            age = 2 * self._settings.install_timeout if building else older_than
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < now - age:
                    shutil.rmtree(entry)
                    removed += 1
        return removed

    def mark_used(self, folder: str) -> None:
        """Record that a cached set is still in use (its mtime; see :meth:`prune`)."""
        with contextlib.suppress(OSError):
            os.utime(Path(folder).parent)

    # -- one install --------------------------------------------------------------------

    async def _install(self, language: Language, pairs: Pairs, key: str) -> str:
        problem = self.problem()
        if problem is not None:
            raise InstallError(problem)
        ttl = self._settings.idle_timeout
        started = time.monotonic()
        outcome = "error"
        try:
            lock = await self._store.load_lock(key, ttl)
            if lock is not None:
                folder = self._folder(language, lock)
                if (folder / _COMPLETE).exists():
                    outcome = "cached"
                    return str(self._mounted(language, folder))
                outcome = "replayed"
                await self._build(
                    language, folder, lambda tmp: self._replay(language, pairs, lock, tmp)
                )
            else:
                resolved: dict[str, bytes] = {}

                async def resolve(tmp: Path) -> None:
                    resolved["lock"] = await self._resolve(language, pairs, tmp)

                tmp = await self._build_unnamed(language, resolve)
                folder = self._folder(language, resolved["lock"])
                self._publish(tmp, folder)
                await self._store.save_lock(key, resolved["lock"], ttl)
                outcome = "resolved"
            return str(self._mounted(language, folder))
        except InstallError:
            outcome = "failed"
            raise
        finally:
            if outcome != "cached":
                self._metrics.installed(language, outcome, time.monotonic() - started)
            else:
                self._metrics.installed(language, outcome, None)

    def _folder(self, language: Language, lock: bytes) -> Path:
        return self.cache / f"{language}-{hashlib.sha256(lock).hexdigest()[:32]}"

    @staticmethod
    def _mounted(language: Language, folder: Path) -> Path:
        return folder / ("site" if language == "python" else "node_modules")

    def _new_tmp(self, language: Language) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.cache.stat().st_mode)
        if mode & 0o055 != 0o055:  # sandboxes must read it; keep any group write bit
            with contextlib.suppress(OSError):
                os.chmod(self.cache, mode | 0o755)
        return Path(tempfile.mkdtemp(prefix=f".{language}-", dir=self.cache))

    async def _build_unnamed(self, language: Language, work: _Work) -> Path:
        tmp = self._new_tmp(language)
        try:
            await work(tmp)
            (tmp / _COMPLETE).touch()
            await asyncio.to_thread(_open_up, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    async def _build(self, language: Language, folder: Path, work: _Work) -> None:
        tmp = await self._build_unnamed(language, work)
        self._publish(tmp, folder)

    @staticmethod
    def _publish(tmp: Path, folder: Path) -> None:
        """Rename a complete build into place (another process may have won the race)."""
        try:
            os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / _COMPLETE).exists():
                raise InstallError(f"cannot place the dependencies at {folder}") from None

    # -- pip / npm ------------------------------------------------------------------------

    def _pip_argv(self, tmp: Path) -> list[str]:
        argv = [
            self._python, "-m", "pip", "install",
            "--only-binary", ":all:",
            "--target", str(tmp / "site"),
            "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
            "--no-cache-dir",
        ]  # fmt: skip
        if self._settings.pip_index_url:
            argv += ["--index-url", self._settings.pip_index_url]
        return argv

    def _npm_argv(self, command: str) -> list[str]:
        npm = self._npm or shutil.which("npm")
        if npm is None:
            raise InstallError(
                "npm is not installed on this node: Node dependencies cannot be installed "
                "(apt-get install npm)"
            )
        argv = [npm, command, "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"]
        if self._settings.npm_registry:
            argv += ["--registry", self._settings.npm_registry]
        return argv

    async def _resolve(self, language: Language, pairs: Pairs, tmp: Path) -> bytes:
        if language == "python":
            report = tmp / "report.json"
            argv = [*self._pip_argv(tmp), "--report", str(report), "--", *pip_requirements(pairs)]
            await self._run(argv, tmp, "pip")
            lock = locks.pip_lock(json.loads(report.read_text()))
            report.unlink()
            return lock
        (tmp / "package.json").write_text(json.dumps(locks.npm_package(pairs)))
        await self._run(self._npm_argv("install"), tmp, "npm")
        return locks.npm_lock(json.loads((tmp / "package-lock.json").read_text()))

    async def _replay(self, language: Language, pairs: Pairs, lock: bytes, tmp: Path) -> None:
        try:
            if language == "python":
                lines, hashed = locks.pip_requirements(lock)
            else:
                package, package_lock = locks.npm_files(lock, pairs)
        except (ValueError, AttributeError, TypeError) as error:
            raise InstallError(f"the stored dependency lock is unusable: {error}") from None
        if language == "python":
            requirements = tmp / "requirements.txt"
            requirements.write_text("\n".join(lines) + "\n")
            argv = [*self._pip_argv(tmp), "--no-deps", "-r", str(requirements)]
            if hashed:
                argv.append("--require-hashes")
            await self._run(argv, tmp, "pip")
            requirements.unlink()
            return
        (tmp / "package.json").write_text(json.dumps(package))
        (tmp / "package-lock.json").write_text(json.dumps(package_lock))
        await self._run(self._npm_argv("ci"), tmp, "npm")

    def _environment(self, work: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSANDBOX_")}
        env.update(
            PIP_NO_INPUT="1",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            # npm needs a cache: one per run, removed with the run (see _run).
            npm_config_cache=str(work / _NPM_CACHE),
            npm_config_update_notifier="false",
            npm_config_fund="false",
            npm_config_audit="false",
        )
        return env

    async def _run(self, argv: Sequence[str], cwd: Path, tool: str) -> _Run:
        timeout = self._settings.install_timeout
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=self._environment(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # No umask=: uvloop (the CLI's loop) refuses it; _open_up makes the
                # finished build readable by the sandbox uids whatever the umask.
                start_new_session=True,
            )
        except OSError as error:
            raise InstallError(f"cannot run {tool}: {error.strerror}") from None
        assert process.stdout is not None
        tail = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await process.stdout.read(65536):
                    tail = (tail + chunk)[-_OUTPUT_TAIL:]
                await process.wait()
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            raise InstallError(f"{tool} did not finish within {timeout:g} s") from None
        except BaseException:
            _kill_group(process.pid)
            with contextlib.suppress(Exception):
                await process.wait()
            raise
        finally:
            shutil.rmtree(cwd / _NPM_CACHE, ignore_errors=True)
        output = tail.decode("utf-8", "replace")
        if process.returncode != 0:
            lines = _error_lines(output)
            raise InstallError(f"{tool} failed (exit {process.returncode}):\n{lines}")
        log.debug("%s finished in %s", tool, cwd)
        return _Run(process.returncode or 0, output)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
