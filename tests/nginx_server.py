"""A real nginx master for tests, running a rendered include inside a minimal nginx.conf.

    balancer = Balancer(tmp_path, tmp_path / "microsandbox-loadbalancer.conf")
    balancer.start()     # nginx -p PREFIX -c PREFIX/nginx.conf, in the foreground
    balancer.reload()    # nginx -s reload; returns once the new configuration accepts
    balancer.stop()

Everything nginx writes (pid, error log, temp dirs) stays under the prefix.
:func:`port_free_on` finds one port free on several loopback addresses (the rendered
upstreams use one port for every node).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def port_free_on(addresses: list[str]) -> int:
    """A TCP port free on every address (bounded tries)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on every one of {addresses}")


class Balancer:
    """A real nginx master running the rendered file inside a minimal nginx.conf."""

    def __init__(
        self,
        prefix: Path,
        include: Path,
        *,
        worker_processes: int = 2,
        worker_connections: int = 512,
    ) -> None:
        self.prefix = prefix
        self.include = include
        self.conf = prefix / "nginx.conf"
        self.worker_processes = worker_processes
        self.worker_connections = worker_connections
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.conf.write_text(
            f"daemon off;\nworker_processes {self.worker_processes};\n"
            f"pid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/error.log;\n"
            f"events {{ worker_connections {self.worker_connections}; }}\n"
            f"http {{\n  client_body_temp_path {self.prefix}/body;\n"
            f"  proxy_temp_path {self.prefix}/proxy;\n  include {self.include};\n}}\n"
        )
        self.process = subprocess.Popen(
            ["nginx", "-p", f"{self.prefix}/", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def workers(self) -> dict[int, str]:
        """The master's worker processes: pid -> process title."""
        assert self.process is not None
        master = self.process.pid
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return {}
        titles: dict[int, str] = {}
        for child in children:
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            titles[int(child)] = title.decode(errors="replace").strip()
        return {pid: title for pid, title in titles.items() if "worker process" in title}

    def reload(self) -> None:
        """Reload, and return once the new configuration is what accepts connections.

        After ``nginx -s reload`` the old workers keep serving (and, for a moment,
        accepting) under the old configuration; they stop accepting when they turn to
        "worker process is shutting down", and the ones serving an open WebSocket stay
        in that state until it closes. So wait until every old worker has turned so (or
        left) and as many new workers run as the configuration asks for.
        """
        old = {pid for pid, title in self.workers().items() if "shutting down" not in title}
        subprocess.run(
            ["nginx", "-p", f"{self.prefix}/", "-c", str(self.conf), "-s", "reload"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = self.workers()
            accepting = {pid for pid, title in workers.items() if "shutting down" not in title}
            if not accepting & old and len(accepting) == self.worker_processes:
                return
            time.sleep(0.02)
        raise AssertionError(f"nginx did not switch its workers within 30 s: {self.workers()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""
