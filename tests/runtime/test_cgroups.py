"""cgroup limits of bubblewrap sandboxes: in force on the host's hierarchy, laid out the way
the host's init expects, and never dropped without the operator saying so.

These machines have cgroup v1 hybrid; a Debian 12 host has pure cgroup v2 under systemd.
tests/vm/test_debian12_vm.py runs this file inside Debian 12's own kernel with systemd as
PID 1, under the role's unit (Delegate=yes), so the v2 tests below run there; each skips
with the reason on the other layout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend, BubblewrapSandbox

from .helpers import EXAMPLES, TEST_SETTINGS, call, loaded

CGROUP_ROOT = Path("/sys/fs/cgroup")
V2 = (CGROUP_ROOT / "cgroup.controllers").exists()
REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "reflow-microsandbox"

HOG = "def process(context):\n    hog = bytearray(200 * 1024 * 1024)\n    return len(hog)\n"


def cgroups_of(pid: int) -> dict[str, str]:
    """Controller (``""`` for v2) -> the cgroup path of ``pid``."""
    result = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            result[controller] = path
    return result


def runner_pid(sandbox: BubblewrapSandbox) -> int:
    """The interpreter inside the sandbox (the last process bwrap started)."""
    return sandbox.pids[-1]


async def test_every_cgroup_limit_is_in_force_on_this_hosts_hierarchy() -> None:
    settings = SandboxConfig(**TEST_SETTINGS)
    backend = BubblewrapBackend(settings)
    await backend.start()
    try:
        mechanism = "cgroup_v2" if V2 else "cgroup_v1"
        in_force = {(e.language, e.limit): e.mechanism for e in backend.enforced_limits()}
        for language in ("python", "nodejs"):
            for limit in ("memory", "cpu", "processes"):
                assert in_force[(language, limit)] == mechanism, (language, limit)
        for language in ("python", "nodejs"):
            sandbox = await backend.spawn(language)  # type: ignore[arg-type]
            assert isinstance(sandbox, BubblewrapSandbox)
            try:
                paths = cgroups_of(runner_pid(sandbox))
                if V2:
                    group = CGROUP_ROOT / paths[""].lstrip("/")
                    memory = int((group / "memory.max").read_text())
                    quota, period = (group / "cpu.max").read_text().split()
                    pids = int((group / "pids.max").read_text())
                else:
                    memory_dir = CGROUP_ROOT / "memory" / paths["memory"].lstrip("/")
                    memory = int((memory_dir / "memory.limit_in_bytes").read_text())
                    cpu = CGROUP_ROOT / "cpu" / paths["cpu"].lstrip("/")
                    quota = (cpu / "cpu.cfs_quota_us").read_text().strip()
                    period = (cpu / "cpu.cfs_period_us").read_text().strip()
                    pids = int(
                        (CGROUP_ROOT / "pids" / paths["pids"].lstrip("/") / "pids.max").read_text()
                    )
                assert memory == settings.memory_mb * 1024 * 1024
                assert int(quota) / int(period) == settings.cpu_limit
                assert settings.max_processes < pids <= settings.max_processes + 16
            finally:
                await sandbox.close()
    finally:
        await backend.close()


@pytest.mark.skipif(not V2, reason="cgroup v1 has no no-internal-process rule (VM test: v2)")
async def test_v2_control_plane_sits_in_a_leaf_and_sandboxes_in_siblings() -> None:
    """The layout systemd expects of a Delegate=yes service (systemd.io/CGROUP_DELEGATION)."""
    backend = BubblewrapBackend(SandboxConfig(**TEST_SETTINGS))
    await backend.start()
    try:
        sandbox = await backend.spawn("python")
        assert isinstance(sandbox, BubblewrapSandbox)
        try:
            own = CGROUP_ROOT / cgroups_of(os.getpid())[""].lstrip("/")
            mine = CGROUP_ROOT / cgroups_of(runner_pid(sandbox))[""].lstrip("/")
            if own == CGROUP_ROOT:
                pytest.skip("runs in the root cgroup, which the no-internal-process rule spares")
            assert own.name == "supervisor"
            base = own.parent
            # The delegated cgroup holds no process and enables the controllers below it.
            assert (base / "cgroup.procs").read_text().split() == []
            enabled = set((base / "cgroup.subtree_control").read_text().split())
            assert {"cpu", "memory", "pids"} <= enabled
            # The sandbox is in a sibling subtree of the control plane's leaf.
            assert mine.parent.parent == base
            assert mine.parent.name.startswith("reflow-microsandbox-")
            assert str(runner_pid(sandbox)) in (mine / "cgroup.procs").read_text().split()
        finally:
            await sandbox.close()
    finally:
        await backend.close()
    # A second backend in the same process reuses the layout instead of nesting deeper.
    again = BubblewrapBackend(SandboxConfig(**TEST_SETTINGS))
    await again.start()
    try:
        assert cgroups_of(os.getpid())[""].endswith("/supervisor")
        assert not cgroups_of(os.getpid())[""].endswith("/supervisor/supervisor")
    finally:
        await again.close()


async def test_without_cgroups_the_backend_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    # An empty folder as the cgroup mount point: a host (or container) without a hierarchy.
    backend = BubblewrapBackend(SandboxConfig(**TEST_SETTINGS), cgroup_root=tmp_path)
    with pytest.raises(SandboxError) as raised:
        await backend.start()
    assert raised.value.kind == "unavailable"
    message = raised.value.message
    assert "cgroups are unusable" in message
    assert "without a CPU limit" in message
    assert "sandbox.allow_rlimits_only" in message
    assert "Delegate=yes" in message
    assert os.listdir(tmp_path) == []


async def test_allow_rlimits_only_starts_and_reports_what_is_not_enforced(tmp_path: Path) -> None:
    settings = SandboxConfig(**{**TEST_SETTINGS, "allow_rlimits_only": True})
    backend = BubblewrapBackend(settings, cgroup_root=tmp_path)
    await backend.start()
    try:
        in_force = {(e.language, e.limit): e.mechanism for e in backend.enforced_limits()}
        assert in_force[("python", "cpu")] == "none"
        assert in_force[("nodejs", "cpu")] == "none"
        assert in_force[("nodejs", "memory")] == "none"
        assert in_force[("python", "memory")] == "rlimit"
        assert in_force[("python", "processes")] == "rlimit"
        # What rlimits still give holds: Python's address space stops a big allocation.
        sandbox = await loaded(backend, HOG)
        try:
            with pytest.raises(SandboxError) as raised:
                await call(sandbox, timeout=10)
            assert raised.value.kind == "memory", raised.value.message
        finally:
            await sandbox.close()
    finally:
        await backend.close()


def _hide_cgroups() -> list[str]:
    """A command prefix that runs a command on this host with no usable cgroup hierarchy.

    Under systemd: a transient unit with ProtectControlGroups=yes (the hierarchy read-only,
    an option the role's unit deliberately leaves off). Elsewhere: a private mount
    namespace with an empty tmpfs over /sys/fs/cgroup. Skips where neither is possible.
    """
    if Path("/run/systemd/system").is_dir() and shutil.which("systemd-run"):
        return [
            "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
            "-p", "ProtectControlGroups=yes", "--",
        ]  # fmt: skip
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("neither systemd nor unshare(1) here to hide the cgroup hierarchy")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace: {probe.stderr.decode().strip()}")
    return [
        unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
        'mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh",
    ]  # fmt: skip


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
def test_the_cli_on_a_host_without_cgroups(allowed: bool) -> None:
    """For real: the hierarchy hidden from the process, ``run`` of the example actor."""
    state = f"/tmp/reflow-cli-{uuid.uuid4().hex}.db"  # not in the (maybe read-only) repo
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MICROSANDBOX_STATE_SQLITE_PATH": state}
    if allowed:
        env["MICROSANDBOX_SANDBOX_ALLOW_RLIMITS_ONLY"] = "true"
    argv = [*_hide_cgroups(), str(CLI), "run", str(EXAMPLES / "test_actor.py")]
    if argv[0] == "systemd-run":
        argv[1:1] = [f"--setenv={key}={value}" for key, value in env.items()]
    try:
        done = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=120)
    finally:
        for leftover in Path("/tmp").glob(Path(state).name + "*"):
            leftover.unlink()
    if allowed:
        assert done.returncode == 0, done.stderr
        assert '"status": "success"' in done.stdout
        assert "cgroups are unusable" in done.stderr
        assert "sandbox.allow_rlimits_only" in done.stderr
    else:
        assert done.returncode != 0, done.stdout
        assert "cgroups are unusable" in done.stderr, done.stderr
        assert "sandbox.allow_rlimits_only: true" in done.stderr
