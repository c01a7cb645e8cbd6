"""A private Docker engine for one test: its own dockerd, socket, data and state folders.

Restarting the shared engine would stop every other user's containers, so the engine
restart fault runs against a dockerd of the test's own: ``--host`` a unix socket in a
temp folder, its own ``--data-root``, ``--exec-root`` and ``--pidfile``, no bridge, no
iptables rules, no userland proxy (sandboxes have no network), and a network namespace of
its own (``unshare --net``): a dockerd started with ``--bridge=none`` deletes the host's
``docker0`` at start (moby's ``removeDefaultBridgeInterface``), the shared engine's
default bridge, which broke every later ``docker build``. That dockerd starts its own
containerd (under the exec root). The runner images are copied from the shared engine
(``docker save | docker load``, about 10 s). :meth:`PrivateEngine.close` kills whatever
of it still runs (dockerd, containerd, shims, found by the folder in their command line
or by their pidfile), unmounts what it mounted and removes the folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.server.conftest import descendants

IMAGES = ("reflow-microsandbox/python-runner:latest", "reflow-microsandbox/node-runner:latest")


def unavailable_reason() -> str | None:
    """Why a private engine cannot run here (None: it can)."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed"
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed (the private dockerd needs a network namespace)"
    return None


class PrivateEngine:
    """``start()``, ``restart(signal.SIGTERM | signal.SIGKILL)``, ``docker(*args)``, ``close()``."""

    def __init__(self) -> None:
        # Short: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="msb-engine-", dir="/tmp"))
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = self.dir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            "unshare",
            "--net",
            "--",
            "dockerd",
            f"--host={self.host}",
            f"--data-root={self.dir / 'data'}",
            f"--exec-root={self.dir / 'exec'}",
            f"--pidfile={self.dir / 'docker.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--userland-proxy=false",
        ]

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine."""
        return subprocess.run(
            ["docker", "-H", self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def answers(self) -> bool:
        """Whether the engine answers now (a starting dockerd may accept and not reply)."""
        try:
            answer = self.docker("version", "--format", "{{.Server.Version}}", timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return answer.returncode == 0

    def start(self, timeout: float = 120) -> PrivateEngine:
        """Start dockerd and wait (bounded) until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not answer:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def load_images(self, images: tuple[str, ...] = IMAGES) -> None:
        """Copy the runner images from the shared engine (``docker save | docker load``)."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", self.host, "load"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(60) != 0 or load.returncode != 0:
            raise RuntimeError(f"copying {images} into the private engine failed: {load.stderr}")

    def stop(self, how: signal.Signals, timeout: float = 60) -> None:
        """Stop dockerd with ``how`` and wait until it has exited (bounded)."""
        assert self.process is not None
        containerd = self._containerd_pid()
        self.process.send_signal(how)
        self.process.wait(timeout)
        # dockerd's own containerd dies with it (a parent-death signal), but not at once;
        # a dockerd started while it lingers connects to it and times out.
        deadline = time.monotonic() + timeout
        while containerd and Path(f"/proc/{containerd}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd {containerd} outlived dockerd by {timeout} s")
            time.sleep(0.05)

    def _containerd_pid(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "exec" / "containerd" / "containerd.pid").read_text())
        return 0

    def restart(self, how: signal.Signals) -> None:
        self.stop(how)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def containers(self, *filters: str) -> list[str]:
        """Ids of the engine's containers, running or not (``filters``: ``label=...``)."""
        args = [arg for f in filters for arg in ("--filter", f)]
        out = self.docker("ps", "-aq", "--no-trunc", *args)
        if out.returncode != 0:
            raise RuntimeError(f"docker ps failed: {out.stderr}")
        return out.stdout.split()

    def container_processes(self) -> set[int]:
        """Host pids of every process in this engine's containers (below its shims)."""
        shims = [pid for pid in self._processes() if _name(pid).startswith("containerd-shim")]
        return set().union(*(descendants(pid) for pid in shims)) if shims else set()

    def _processes(self) -> list[int]:
        """Processes of this engine: any whose command line names its folder (dockerd,
        containerd, shims), plus their children (a container's processes)."""
        mine = str(self.dir)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if mine in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
        return found

    def close(self) -> None:
        """Kill everything of this engine still running, unmount, remove the folders."""
        if self.process is not None and self.process.poll() is None and self.answers():
            with contextlib.suppress(Exception):
                ids = self.containers()
                if ids:
                    self.docker("rm", "-f", *ids, timeout=120)
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.process.terminate()
                self.process.wait(30)
        for _ in range(50):  # bounded: shims may start children while dying
            pids = self._processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.wait(10)
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.dir))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""
