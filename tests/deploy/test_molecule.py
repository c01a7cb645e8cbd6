"""``molecule test`` on a real four-host cluster of systemd containers.

The default scenario (molecule/default) creates a load balancer, a Redis + Prometheus
host and two sandbox nodes from the local systemd image, converges ansible/deploy.yml,
converges again and fails on any change (idempotence), then runs verify.yml: an actor
through the balancer with outputs and pushes, actor affinity, state shared across
nodes, Redis refusing a client without the password, every Prometheus target up, and
calls still succeeding while one node is down. Molecule writes only below a temporary
HOME; names carry a per-run suffix; the containers and network are removed afterwards,
also when molecule itself fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

from .support import controller_pythons, require_engine, run_script

pytestmark = pytest.mark.deploy

VENV_BIN = REPO_ROOT / ".venv" / "bin"


def _remove_leftovers(suffix: str) -> None:
    """Remove the run's containers and network if molecule could not (it normally does)."""
    names = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=owner=molecule", "--filter",
         f"name=-{suffix}$"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, timeout=120)
    subprocess.run(["docker", "network", "rm", f"msbx-net-{suffix}"], capture_output=True,
                   timeout=30)


@pytest.mark.timeout(1800)
def test_molecule_cluster_converges_idempotently_and_serves_reflow_through_the_balancer(
    deploy_locked: None, tmp_path: Path,
) -> None:
    require_engine()
    run_script("scripts/build-host-image.sh")
    suffix = secrets.token_hex(3)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        ANSIBLE_HOME=str(home / ".ansible"),
        XDG_CACHE_HOME=str(home / ".cache"),
        MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"),
        MOLECULE_RUN_SUFFIX=suffix,
        # pip on the controller builds the nodes' wheels: keep its real cache.
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        ANSIBLE_FORCE_COLOR="false",
        NO_COLOR="1",
    )
    # The nodes' wheels are built by a controller Python other than theirs (pyenv's
    # python3 here), as an operator's may be (prepare.yml, scripts/wheelhouse.py).
    others = controller_pythons()
    if others:
        env["MSBX_WHEELHOUSE_PYTHON"] = str(others[0])
    try:
        result = subprocess.run(
            [str(VENV_BIN / "molecule"), "test", "--scenario-name", "default"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1700,
        )
    finally:
        _remove_leftovers(suffix)
    output = result.stdout + result.stderr
    # Molecule's verdicts (which step, which non-idempotent tasks) and the last lines.
    verdicts = [
        line for line in output.splitlines()
        if line.lstrip().startswith(("*", "CRITICAL", "ERROR", "fatal:")) or "FAILED!" in line
    ]
    assert result.returncode == 0, "molecule test failed:\n" + "\n".join(
        [*verdicts[-60:], "--- last lines ---", *output.splitlines()[-60:]]
    )
    assert "idempotence" in output and "verify" in output
