"""A real ``redis-server`` for tests: free loopback port, private temp dir, clean-up.

    with RedisServer(password="s3cret") as server:
        url = server.url            # redis://:s3cret@127.0.0.1:PORT/0
        server.stop()               # Redis goes down (the port stays reserved for it)
        server.start()              # and comes back on the same port

``persist=True`` keeps the data across stop/start (append-only file in the temp
dir); by default a restarted server is empty. ``conf`` runs a rendered redis.conf
(templates/redis.conf.j2) with only the address, port and paths overridden; give
its ``requirepass`` as ``password``. ``pause()``/``resume()`` freeze the process
(SIGSTOP/SIGCONT: Redis unreachable, connections hang) and ``kill()`` SIGKILLs it.
Every server still running when the interpreter exits is killed, and its temp dir
removed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

_LIVE: weakref.WeakSet[RedisServer] = weakref.WeakSet()


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start (the message quotes its log)."""


class RedisServer:
    """One redis-server process bound to 127.0.0.1, started and stopped by the test."""

    def __init__(
        self,
        *,
        password: str | None = None,
        persist: bool = False,
        port: int = 0,
        conf: Path | None = None,
    ) -> None:
        self.password = password
        self.persist = persist
        self.conf = conf
        self.host = "127.0.0.1"
        self.port = port
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        _LIVE.add(self)

    @property
    def url(self) -> str:
        """The URL a client connects with (password included)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_text(self) -> str:
        log = self._dir / "redis.log" if self._dir else None
        return log.read_text(errors="replace") if log and log.exists() else ""

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers."""
        if self.running:
            return self
        if shutil.which("redis-server") is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        first_start = self.port == 0
        for _ in range(5 if first_start else 1):
            if first_start:
                self.port = _free_port(self.host)
            self._process = subprocess.Popen(
                self._command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(timeout):
                return self
            self._kill()
            if "Address already in use" not in self.log_text:
                break
        raise RedisServerError(
            f"redis-server did not start on {self.host}:{self.port}; its log:\n{self.log_text}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port is kept for :meth:`start`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets but answers nothing."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no final fsync (the port is kept)."""
        self._kill()

    def close(self) -> None:
        """Stop the server and remove its temp dir; idempotent."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _command(self) -> list[str]:
        assert self._dir is not None
        if self.conf is not None:
            return [
                "redis-server", str(self.conf),
                "--bind", self.host,
                "--port", str(self.port),
                "--dir", str(self._dir),
                "--logfile", str(self._dir / "redis.log"),
                "--pidfile", str(self._dir / "redis.pid"),
                "--daemonize", "no",
                "--supervised", "no",
            ]  # fmt: skip
        command = [
            "redis-server",
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if _answers(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a paused process dies only when resumed
            process.wait(timeout=10)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(host: str, port: int) -> bool:
    """Whether a Redis answers PING on ``host:port`` (a NOAUTH error counts: it is up)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = connection.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()
