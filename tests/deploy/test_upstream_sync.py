"""The balancer's upstream sync (docker/nginx_upstream_sync.py), its pure core, on the
committed compose/nginx-loadbalancer.conf rendered from templates/ and checked by the
real ``nginx -t``. tests/deploy/test_swarm.py runs it for real inside a swarm; this is a
fast extra layer for the expansion rules."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT

RENDERED = (REPO_ROOT / "compose" / "nginx-loadbalancer.conf").read_text()


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "nginx_upstream_sync", REPO_ROOT / "docker" / "nginx_upstream_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sync = _load()


def _servers(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("server ") and line.strip() != "server {"]


def test_each_placeholder_line_becomes_one_line_per_replica_with_its_parameters() -> None:
    text = sync.expand(RENDERED, "microsandbox", ["10.0.1.9", "10.0.1.5"])
    assert _servers(text) == [
        "server 10.0.1.5:5555 max_fails=3 fail_timeout=10s; # node=10.0.1.5",
        "server 10.0.1.9:5555 max_fails=3 fail_timeout=10s; # node=10.0.1.9",
        "server 10.0.1.5:5556 max_fails=3 fail_timeout=10s; # node=10.0.1.5",
        "server 10.0.1.9:5556 max_fails=3 fail_timeout=10s; # node=10.0.1.9",
        "server 10.0.1.5:5556 max_fails=3 fail_timeout=10s; # node=10.0.1.5",
        "server 10.0.1.9:5556 max_fails=3 fail_timeout=10s; # node=10.0.1.9",
    ]
    # Everything else is as rendered: the affinity hash, least_conn, the server block.
    rest = [line for line in text.splitlines() if not line.strip().startswith("server 10.")]
    original = [line for line in RENDERED.splitlines()
                if not line.strip().startswith("server microsandbox:")]
    assert rest == original
    # The same set in another order gives the same text (no needless reload).
    assert sync.expand(RENDERED, "microsandbox", ["10.0.1.5", "10.0.1.9", "10.0.1.5"]) == text


def test_no_replica_gives_a_down_server_so_nginx_still_starts_and_answers_502() -> None:
    text = sync.expand(RENDERED, "microsandbox", [])
    servers = _servers(text)
    assert len(servers) == 3 and all(" down;" in line for line in servers)


def test_ipv6_replicas_are_bracketed() -> None:
    (first, *_) = _servers(sync.expand(RENDERED, "microsandbox", ["fd00::5"]))
    assert first.startswith("server [fd00::5]:5555 ")


def test_a_template_without_the_placeholder_is_refused_with_the_reason() -> None:
    with pytest.raises(sync.TemplateError, match="one backend named 'other'"):
        sync.expand(RENDERED, "other", ["10.0.1.5"])


def test_ready_replicas_are_chosen_and_none_ready_fails_open() -> None:
    assert sync.choose(["10.0.1.5", "10.0.1.6"], ["10.0.1.6"]) == ["10.0.1.6"]
    assert sync.choose(["10.0.1.5", "10.0.1.6"], []) == ["10.0.1.5", "10.0.1.6"]
    assert sync.choose(["10.0.1.5"], ["10.0.1.7"]) == ["10.0.1.5"]  # gone meanwhile
    assert sync.choose([], []) == []


def test_bad_numbers_in_the_environment_name_the_variable() -> None:
    with pytest.raises(ValueError, match="MSBX_SYNC_INTERVAL='soon' is not a number"):
        sync.Settings.from_environ({"MSBX_SYNC_INTERVAL": "soon"})


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("addresses", [[], ["10.0.1.5"], ["10.0.1.5", "10.0.1.6", "fd00::7"]])
def test_nginx_accepts_every_expansion(tmp_path: Path, addresses: list[str]) -> None:
    conf = tmp_path / "nginx.conf"
    (tmp_path / "lb.conf").write_text(sync.expand(RENDERED, "microsandbox", addresses))
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{ access_log off; include {tmp_path}/lb.conf; }}\n"
    )
    # The rendered file logs to /var/log/nginx/access.log: point it at the scratch dir.
    lb = (tmp_path / "lb.conf").read_text().replace("/var/log/nginx/access.log",
                                                      str(tmp_path / "access.log"))
    (tmp_path / "lb.conf").write_text(lb)
    result = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
