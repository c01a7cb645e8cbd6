"""Inside the Debian 12 VM: the role's own unit serves Python and JavaScript actors with every
sandbox in a cgroup v2 of its own, beside the control plane's leaf.

Runs only in the guest that tests/vm/test_debian12_vm.py boots (REFLOW_VM_GUEST=1), where
tests/vm/guest/run.sh installed the unit and microsandbox.yaml rendered from the role's
templates with the production inventory's pool sizes (10 warm sandboxes per language).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("REFLOW_VM_GUEST") != "1",
        reason="runs inside the Debian 12 VM that tests/vm/test_debian12_vm.py boots",
    ),
    pytest.mark.timeout(900),  # 20 warm sandboxes under software emulation
]

UNIT = "reflow-microsandbox.service"
CONFIG = yaml.safe_load(Path("/etc/reflow-microsandbox/microsandbox.yaml").read_text()) if (
    os.environ.get("REFLOW_VM_GUEST") == "1"
) else {}
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Under TCG emulation a sandbox starts in about a second; 20 warm ones take a while.
READY_WITHIN = 600.0
TIMINGS: dict[str, float] = {}


def systemctl(*args: str) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    return done.stdout.strip()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def rpc(actor: str) -> dict[str, object]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "process", "params": {"actor_id": actor}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{CONFIG['server']['http_port']}/api/v1/rpc",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {CONFIG['auth']['tokens'][0]}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        reply: dict[str, object] = json.loads(response.read())
        return reply


@pytest.fixture(scope="module")
def service() -> Iterator[int]:
    """The role's unit, started; yields its main pid once /ready says ready."""
    started = time.monotonic()
    systemctl("start", UNIT)
    try:
        deadline = started + READY_WITHIN
        status, said = 0, ""
        while time.monotonic() < deadline:
            if systemctl("is-active", UNIT) == "failed":
                break
            try:
                status, said = get(CONFIG["server"]["http_port"], "/ready")
            except OSError as error:
                status, said = 0, str(error)
            if status == 200:
                break
            time.sleep(1)
        if status != 200:
            journal = subprocess.run(
                ["journalctl", "--no-pager", "-u", UNIT, "-n", "40"], capture_output=True, text=True
            ).stdout
            pytest.fail(f"{UNIT} not ready ({status} {said}); journal:\n{journal}")
        TIMINGS["ready_seconds"] = round(time.monotonic() - started, 1)
        yield int(systemctl("show", "-p", "MainPID", "--value", UNIT))
    finally:
        systemctl("stop", UNIT)


def test_python_and_javascript_actors_answer(
    service: int, record_property: Callable[[str, object], None]
) -> None:
    record_property("ready_seconds", TIMINGS["ready_seconds"])  # shown by the host test
    for actor in ("test_actor", "test_actor_js"):
        reply = rpc(actor)
        assert "error" not in reply, reply
        result = reply["result"]
        assert isinstance(result, dict)
        assert result["outputs"]["status"] == "success", reply


def test_every_limit_is_enforced_by_cgroup_v2_and_the_pool_is_warm(service: int) -> None:
    status, text = get(CONFIG["server"]["metrics_port"], "/metrics")
    assert status == 200
    enforced: dict[tuple[str, str], tuple[str, float]] = {}
    warm: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "microsandbox_sandbox_limits_enforced":
                key = (labels["language"], labels["limit"])
                enforced[key] = (labels["mechanism"], sample.value)
            if sample.name == "microsandbox_active_sandboxes" and labels["state"] == "warm":
                warm[labels["language"]] = sample.value
    for language in ("python", "nodejs"):
        for limit in ("memory", "cpu", "processes"):
            assert enforced[(language, limit)] == ("cgroup_v2", 1.0), (language, limit)
    pool = CONFIG["sandbox"]["pool"]
    assert warm["python"] >= pool["python"]["min_instances"] - 1  # one may be bound by now
    assert warm["nodejs"] >= pool["nodejs"]["min_instances"] - 1


def test_the_unit_delegates_its_cgroup_the_way_systemd_expects(service: int) -> None:
    unit_cgroup = CGROUP_ROOT / systemctl("show", "-p", "ControlGroup", "--value", UNIT).lstrip("/")
    own = Path(f"/proc/{service}/cgroup").read_text().strip().split("::", 1)[1]
    assert CGROUP_ROOT / own.lstrip("/") == unit_cgroup / "supervisor"
    assert (unit_cgroup / "cgroup.procs").read_text().split() == []
    enabled = set((unit_cgroup / "cgroup.subtree_control").read_text().split())
    assert {"cpu", "memory", "pids"} <= enabled
    parents = [p for p in unit_cgroup.iterdir() if p.name.startswith("reflow-microsandbox-")]
    assert len(parents) == 1, parents
    sandboxes = [p for p in parents[0].iterdir() if p.is_dir()]
    memory = CONFIG["sandbox"]["memory_mb"] * 1024 * 1024
    assert len(sandboxes) >= 18  # 10 warm per language, minus the ones just used
    for sandbox in sandboxes:
        assert int((sandbox / "memory.max").read_text()) == memory
        assert (sandbox / "cpu.max").read_text().split()[0] == str(
            int(CONFIG["sandbox"]["cpu_limit"] * 100_000)
        )
        assert (sandbox / "cgroup.procs").read_text().split(), f"{sandbox} holds no process"
