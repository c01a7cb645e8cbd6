"""Runs the real Ansible tools against the repository, isolated from ~/.ansible.

Every ansible command gets its own ANSIBLE_HOME and temp dirs under pytest's tmp
path, so these tests can run beside others (and molecule) without sharing state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
INVENTORIES = ("local", "staging", "production")
NGINX_CHECK = REPO / "ansible/roles/nginx/files/nginx-include-check"
REDIS_CHECK = REPO / "ansible/roles/redis/files/redis-config-check"

# The secrets the example inventories expect from a vault (test values only). The
# password holds characters that URLs and redis.conf treat specially.
TEST_SECRETS: dict[str, Any] = {
    "vault_redis_password": "test/only:redis@pass#word%+=0123456789",
    "vault_microsandbox_auth_tokens": ["test-only-token-abcdef"],
}


@dataclass
class AnsibleRunner:
    """Runs ansible-* commands from the repository root with an isolated environment."""

    home: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_HOME=str(self.home),
            ANSIBLE_LOCAL_TEMP=str(self.home / "tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.home / "remote-tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            NO_COLOR="1",
            PY_COLORS="0",
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    def run(self, tool: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / tool), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def playbook(
        self,
        playbook: str,
        inventory: str,
        extra_vars: dict[str, Any] | None = None,
        *args: str,
    ) -> subprocess.CompletedProcess[str]:
        command = ["-i", inventory, playbook]
        if extra_vars:
            command += ["-e", json.dumps(extra_vars)]
        return self.run("ansible-playbook", *command, *args)

    def render(
        self, inventory: str, dest: Path, extra_vars: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """ansible/render.yml for an inventory directory under inventories/."""
        variables = {"render_dest": str(dest), **(extra_vars or {})}
        return self.playbook("ansible/render.yml", f"inventories/{inventory}", variables)


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="session")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> AnsibleRunner:
    return AnsibleRunner(home=tmp_path_factory.mktemp("ansible-home"))


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for rendering the TLS balancer example."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "lb.crt", folder / "lb.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=lb.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def render_vars(inventory: str, tmp: Path, tls_pair: tuple[Path, Path]) -> dict[str, Any]:
    """What a test render adds to an example inventory: vault secrets, a temp access
    log (nginx -t opens it), and a real certificate where the example enables TLS."""
    cert, key = tls_pair
    extra: dict[str, Any] = {
        **TEST_SECRETS,
        "nginx_lb_access_log": str(tmp / "access.log"),
    }
    if inventory == "production":
        extra["nginx_lb_tls_certificate"] = str(cert)
        extra["nginx_lb_tls_certificate_key"] = str(key)
    return extra


@pytest.fixture(scope="session")
def rendered(
    ansible: AnsibleRunner,
    tmp_path_factory: pytest.TempPathFactory,
    tls_pair: tuple[Path, Path],
) -> Callable[[str], Path]:
    """Renders every template for an example inventory once per session; returns
    the output dir (one sub-directory per host)."""
    cache: dict[str, Path] = {}

    def get(inventory: str) -> Path:
        if inventory not in cache:
            dest = tmp_path_factory.mktemp(f"rendered-{inventory}")
            result = ansible.render(inventory, dest, render_vars(inventory, dest, tls_pair))
            assert result.returncode == 0, output_of(result)
            cache[inventory] = dest
        return cache[inventory]

    return get


_GROUPS: dict[str, dict[str, list[str]]] = {}


def inventory_groups(ansible: AnsibleRunner, inventory: str) -> dict[str, list[str]]:
    """Group name -> host names, as ansible-inventory reads the example (cached)."""
    if inventory in _GROUPS:
        return _GROUPS[inventory]
    result = ansible.run("ansible-inventory", "-i", f"inventories/{inventory}", "--list")
    assert result.returncode == 0, output_of(result)
    data = json.loads(result.stdout)
    _GROUPS[inventory] = {
        group: list(body.get("hosts", []))
        for group, body in data.items()
        if isinstance(body, dict) and group not in ("_meta", "all")
    }
    return _GROUPS[inventory]


def run_tool(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def check_config_command(path: Path) -> list[str]:
    """The control plane's own validation: the CLI's check-config when installed."""
    cli = VENV_BIN / "reflow-microsandbox"
    if cli.exists() and shutil.which(str(cli)):
        return [str(cli), "check-config", str(path)]
    return [
        sys.executable,
        "-c",
        "import sys; from reflow_microsandbox.config import load_config; load_config(sys.argv[1])",
        str(path),
    ]
