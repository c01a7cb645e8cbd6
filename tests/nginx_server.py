"""A real nginx master for tests, running a rendered include inside a minimal nginx.conf.

    balancer = Balancer(tmp_path, tmp_path / "microsandbox-loadbalancer.conf")
    balancer.start()     # nginx -p PREFIX -c PREFIX/nginx.conf, in the foreground
    balancer.reload()    # nginx -s reload, after the include changed
    balancer.stop()

Everything nginx writes (pid, error log, temp dirs) stays under the prefix.
:func:`port_free_on` finds one port free on several loopback addresses (the rendered
upstreams use one port for every node).
"""

from __future__ import annotations

import socket
import subprocess
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

    def __init__(self, prefix: Path, include: Path, *, worker_connections: int = 512) -> None:
        self.prefix = prefix
        self.include = include
        self.conf = prefix / "nginx.conf"
        self.worker_connections = worker_connections
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.conf.write_text(
            f"daemon off;\nworker_processes 2;\npid {self.prefix}/nginx.pid;\n"
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

    def reload(self) -> None:
        subprocess.run(
            ["nginx", "-p", f"{self.prefix}/", "-c", str(self.conf), "-s", "reload"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""
