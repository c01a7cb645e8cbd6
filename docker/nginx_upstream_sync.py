#!/usr/bin/env python3
"""Keeps nginx's upstreams equal to the control plane's ready replicas, as they come and go.

nginx (Debian 12 ships 1.22) resolves the names in an ``upstream`` block once, when it
starts or reloads; re-resolving servers (``server ... resolve``) is only in nginx 1.27.3+
and the commercial build. Swarm services and Kubernetes pods change addresses on every
scale and rolling update, so this small supervisor runs nginx and, every ``interval``:

1. resolves the replicas' DNS name (``tasks.microsandbox`` in a swarm, a headless
   Service in Kubernetes: every replica's address);
2. asks each replica's ``GET /ready`` (a draining or warming node answers 503 or
   refuses) and keeps the ready ones, or every resolved one when none is ready
   (fail open: nginx's own ``max_fails`` then still skips dead ones);
3. expands the rendered balancer config (templates/nginx-loadbalancer.conf.j2 rendered
   with one backend whose name is the placeholder, e.g. ``microsandbox``): each line
   ``server PLACEHOLDER:PORT PARAMS; # node=PLACEHOLDER`` becomes one such line per
   replica address, everything else is kept as rendered (affinity hash, routes, TLS);
4. when the result differs from what nginx runs: writes it, checks it with
   ``nginx -t`` (a failing check keeps the previous file) and reloads nginx (HUP).

Signals: TERM, QUIT and INT stop nginx gracefully (QUIT) and exit with its status; HUP
re-syncs at once. If nginx exits, so does this supervisor, with its status.

Environment (defaults in brackets): MSBX_LB_TEMPLATE
[/etc/nginx/microsandbox/loadbalancer.conf], MSBX_LB_CONF
[/etc/nginx/conf.d/microsandbox-loadbalancer.conf], MSBX_UPSTREAM_NODE [microsandbox],
MSBX_UPSTREAM_DNS [tasks.microsandbox] (comma-separated names or addresses),
MSBX_READY_PORT [5555], MSBX_READY_PATH [/ready], MSBX_SYNC_INTERVAL [1.0] (seconds).
Standard library only: it runs with the nginx image's python3.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# ``server HOST:PORT PARAMS; # node=NAME`` as templates/nginx-loadbalancer.conf.j2 writes it.
_SERVER_LINE = re.compile(
    r"^(?P<indent>\s*)server\s+(?P<host>[^\s:;]+):(?P<port>\d+)(?P<params>[^;]*);"
    r"\s*#\s*node=(?P<node>\S+)\s*$"
)
NO_REPLICA_ADDRESS = "127.0.0.1"
"""Where an upstream points, marked ``down``, while no replica exists (nginx refuses an
empty upstream block; requests then get 502 until a replica appears)."""


class TemplateError(ValueError):
    """The rendered config has no server line for the placeholder node."""


# -- the pure core ----------------------------------------------------------------------


def expand(template: str, node: str, addresses: Sequence[str]) -> str:
    """The config with every ``# node=<node>`` server line repeated once per address.

    ``addresses`` are IPv4/IPv6 literals; they are sorted so that the same set always
    gives the same text (``hash ... consistent`` places servers by their address, so
    the order does not move actors, but an unchanged text means no reload). With no
    address, each such line points at :data:`NO_REPLICA_ADDRESS` marked ``down``.
    Raises TemplateError when the template has no line for ``node``.
    """
    out: list[str] = []
    found = False
    for line in template.splitlines(keepends=True):
        match = _SERVER_LINE.match(line.rstrip("\n"))
        if match is None or match["node"] != node:
            out.append(line)
            continue
        found = True
        indent, port, params = match["indent"], match["port"], match["params"]
        if not addresses:
            out.append(f"{indent}server {NO_REPLICA_ADDRESS}:{port}{params} down;"
                       " # node=none (no replica yet)\n")
            continue
        for address in sorted(set(addresses)):
            host = f"[{address}]" if ":" in address else address
            out.append(f"{indent}server {host}:{port}{params}; # node={address}\n")
    if not found:
        raise TemplateError(
            f"no 'server HOST:PORT ...; # node={node}' line: render the template with one "
            f"backend named {node!r} (see compose/inventory.yml)"
        )
    return "".join(out)


def choose(resolved: Iterable[str], ready: Iterable[str]) -> list[str]:
    """The replicas to route to: the ready ones, or all resolved ones if none is ready."""
    resolved_set = set(resolved)
    ready_set = set(ready) & resolved_set
    return sorted(ready_set or resolved_set)


# -- the I/O shell ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the environment configures (see the module docstring)."""

    template: Path
    conf: Path
    node: str
    dns_names: tuple[str, ...]
    ready_port: int
    ready_path: str
    interval: float

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> Settings:
        """Raises ValueError naming the variable when a number does not parse."""
        def number(name: str, default: str, kind: type[float] | type[int]) -> float:
            value = environ.get(name, default)
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number") from None

        return cls(
            template=Path(environ.get("MSBX_LB_TEMPLATE",
                                      "/etc/nginx/microsandbox/loadbalancer.conf")),
            conf=Path(environ.get("MSBX_LB_CONF",
                                  "/etc/nginx/conf.d/microsandbox-loadbalancer.conf")),
            node=environ.get("MSBX_UPSTREAM_NODE", "microsandbox"),
            dns_names=tuple(n.strip() for n in
                            environ.get("MSBX_UPSTREAM_DNS", "tasks.microsandbox").split(",")
                            if n.strip()),
            ready_port=int(number("MSBX_READY_PORT", "5555", int)),
            ready_path=environ.get("MSBX_READY_PATH", "/ready"),
            interval=number("MSBX_SYNC_INTERVAL", "1.0", float),
        )


def resolve(names: Iterable[str]) -> list[str]:
    """Every address the names resolve to now (none for a name that does not resolve)."""
    found: set[str] = set()
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue  # no replica registered yet (NXDOMAIN), or DNS briefly unavailable
        found.update(str(info[4][0]) for info in infos)
    return sorted(found)


def is_ready(address: str, port: int, path: str, timeout: float) -> bool:
    """Whether the replica answers ``GET path`` with 200 within ``timeout`` seconds."""
    host = f"[{address}]" if ":" in address else address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False  # 503 (draining, warming), refused, timed out


class Supervisor:
    """Runs nginx and keeps its upstreams in step with the ready replicas."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.template = settings.template.read_text()
        expand(self.template, settings.node, [])  # fail now on a template without the line
        self.current: list[str] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None
        self._stop = False
        self._resync = False
        self._probes = ThreadPoolExecutor(max_workers=16)

    def replicas(self) -> list[str]:
        resolved = resolve(self.settings.dns_names)
        timeout = max(0.2, min(1.0, self.settings.interval))
        answers = self._probes.map(
            lambda a: is_ready(a, self.settings.ready_port, self.settings.ready_path, timeout),
            resolved,
        )
        ready = [address for address, ok in zip(resolved, answers, strict=True) if ok]
        return choose(resolved, ready)

    def sync(self) -> None:
        """Render for the ready replicas; write, check and reload when it changed."""
        replicas = self.replicas()
        if replicas == self.current:
            return
        text = expand(self.template, self.settings.node, replicas)
        conf = self.settings.conf
        previous = conf.read_text() if conf.exists() else None
        conf.write_text(text)
        if self.nginx is not None:
            check = subprocess.run(["nginx", "-t", "-q"], capture_output=True, text=True)
            if check.returncode != 0:
                log(f"nginx -t refused the config for {replicas}; keeping the previous one:\n"
                    + check.stderr.strip())
                if previous is not None:
                    conf.write_text(previous)
                return
            self.nginx.send_signal(signal.SIGHUP)
        log(f"upstreams: {', '.join(replicas) or 'none'}"
            f" (was: {', '.join(self.current or []) or 'none'})")
        self.current = replicas

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.sync()
        self.nginx = subprocess.Popen(["nginx", "-g", "daemon off;"])
        next_sync = time.monotonic() + self.settings.interval
        while not self._stop:
            code = self.nginx.poll()
            if code is not None:
                log(f"nginx exited with status {code}")
                return code
            if self._resync or time.monotonic() >= next_sync:
                self._resync = False
                try:
                    self.sync()
                except OSError as error:  # a full disk, a vanished file: retry next time
                    log(f"sync failed: {error}")
                next_sync = time.monotonic() + self.settings.interval
            time.sleep(min(0.1, self.settings.interval))
        self.nginx.send_signal(signal.SIGQUIT)
        return self.nginx.wait()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._resync = True
        self.current = None  # re-render and reload even if the replicas did not change


def log(message: str) -> None:
    print(f"nginx-upstream-sync: {message}", file=sys.stderr, flush=True)


def main() -> int:
    try:
        supervisor = Supervisor(Settings.from_environ(dict(os.environ)))
    except (OSError, ValueError) as error:
        log(str(error))
        return 2
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
