"""The production host, proven in a VM: Debian 12's own kernel, systemd as PID 1, pure
cgroup v2, Debian's python3, nodejs and bubblewrap, the role's unit and configuration.

These machines run cgroup v1 hybrid and a Node.js that is not Debian's, so the sandbox
tests here never see what an operator's Debian 12 host does (issue 16: no cgroup limits
under a Delegate=yes unit, Debian's Node aborting in the sandbox). This test boots that
host under qemu (scripts/build-vm-image.sh builds it from Debian's packages, cached in
/var/cache/reflow-microsandbox/vm) and runs, inside a unit rendered from the role's own
template, the isolation and limits tests of tests/runtime for bubblewrap (memory, CPU,
processes, the attacks, Python and JavaScript actors) and tests/vm/guest (the role's
unit itself, with the production pool sizes, serving both languages). The guest's
junit report comes back over 9p; every test that applies to bubblewrap must pass there,
none may skip. Skips only where qemu cannot run at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

from .machine import Share, boot, build_image, qemu_unusable_reason, vm_lock

# The host-dependent tests: isolation attacks, limits, cgroups, the interpreters' views,
# the example actors of both languages and the role's unit. (tests/runtime/test_actors
# checks the runners' API, which does not depend on the host, beyond the examples.)
GUEST_TESTS = (
    "tests/runtime/test_isolation.py tests/runtime/test_limits.py tests/runtime/test_cgroups.py"
    " tests/runtime/test_interpreter_view.py tests/runtime/test_parent_death.py"
    " tests/runtime/test_actors.py tests/vm/guest"
    ' -k "not docker and (not test_actors or example or node)"'
)
VM_TIMEOUT = 1500.0
# What an operator's host needs to show: each of these must have run and passed inside.
REQUIRED = (
    "test_allocating_past_the_memory_limit_fails_with_memory[bubblewrap-python-bytearray]",
    "test_allocating_past_the_memory_limit_fails_with_memory[bubblewrap-node-heap]",
    "test_allocating_past_the_memory_limit_fails_with_memory[bubblewrap-node-buffers]",
    "test_a_busy_loop_gets_no_more_cpu_than_its_limit[bubblewrap-python]",
    "test_a_busy_loop_gets_no_more_cpu_than_its_limit[bubblewrap-nodejs]",
    "test_fork_bomb_is_contained_and_server_keeps_serving[bubblewrap]",
    "test_seccomp_refuses_namespace_mount_and_ptrace_calls[bubblewrap]",
    "test_host_loopback_port_is_unreachable[bubblewrap]",
    "test_node_twin_of_the_example_runs_and_counts_in_state[bubblewrap]",
    "test_seed_guide_example_runs_and_counts_in_state[bubblewrap]",
    "test_every_cgroup_limit_is_in_force_on_this_hosts_hierarchy",
    "test_v2_control_plane_sits_in_a_leaf_and_sandboxes_in_siblings",
    "test_the_cli_on_a_host_without_cgroups[refused]",
    "test_python_and_javascript_actors_answer",
    "test_every_limit_is_enforced_by_cgroup_v2_and_the_pool_is_warm",
    "test_the_unit_delegates_its_cgroup_the_way_systemd_expects",
)


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    outcome: str  # passed, failed, error or skipped
    message: str
    seconds: float
    properties: dict[str, str]


def read_junit(path: Path) -> list[Case]:
    cases = []
    for node in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = node.find(kind)
            if child is not None:
                outcome = "failed" if kind == "failure" else kind
                message = child.get("message", "")
        properties = {p.get("name", ""): p.get("value", "") for p in node.iter("property")}
        cases.append(
            Case(
                node.get("classname", ""),
                node.get("name", ""),
                outcome,
                message,
                float(node.get("time", "0")),
                properties,
            )
        )
    return cases


def applies_to_bubblewrap(case: Case) -> bool:
    """Docker is not in the VM; every other test must run there."""
    return "[docker" not in case.name


def render_job(job: Path) -> None:
    """The role's unit and microsandbox.yaml, the guest script and its environment."""
    playbook = REPO_ROOT / ".venv" / "bin" / "ansible-playbook"
    # Only what a VM without a cluster must differ in: loopback, a token, no Redis.
    extra = json.dumps(
        {
            "vm_render_dest": str(job),
            "microsandbox_bind_address": "127.0.0.1",
            "microsandbox_redis_host": "",
            "microsandbox_auth_tokens": ["vm-test-token"],
        }
    )
    done = subprocess.run(
        [str(playbook), "-i", "localhost,", str(REPO_ROOT / "tests/vm/render-guest.yml"),
         "-e", extra],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"rendering the guest's files failed:\n{done.stdout[-3000:]}"
    (job / "run").write_text((REPO_ROOT / "tests/vm/guest/run.sh").read_text())
    (job / "env").write_text(f"REPO='{REPO_ROOT}'\nPYTEST_ARGS='{GUEST_TESTS} -v --durations=20'\n")


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"({path.name}: none)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.vm
@pytest.mark.timeout(VM_TIMEOUT + 900)
def test_sandbox_tests_pass_on_debian12_with_cgroup_v2_systemd_and_debians_node(
    tmp_path: Path,
) -> None:
    reason = qemu_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    assert os.path.realpath(venv_python).startswith("/usr/bin/python3"), (
        f"{venv_python} must be made from Debian's /usr/bin/python3 (scripts/setup.sh does): "
        "the guest runs it with its own python3 3.11"
    )
    job = tmp_path / "job"
    job.mkdir()
    render_job(job)
    shares = [Share("job", job, read_only=False), Share("repo", REPO_ROOT, read_only=True)]
    with vm_lock():
        image = build_image(REPO_ROOT)
        outcome = boot(image, shares, tmp_path / "console.log", VM_TIMEOUT)
    report = (
        f"--- console (tail)\n{tail(tmp_path / 'console.log')}\n"
        f"--- pytest in the guest (tail)\n{tail(job / 'pytest.log', 80)}\n"
        f"--- journal of the role's unit (tail)\n{tail(job / 'journal.log', 30)}"
    )
    print(f"VM run: status {outcome.status}, timed out: {outcome.timed_out}", file=sys.stderr)
    assert not outcome.timed_out, f"the VM did not finish within {VM_TIMEOUT:.0f} s\n{report}"
    assert outcome.status is not None, f"the guest printed no end marker\n{report}"
    assert (job / "junit.xml").exists(), f"the guest wrote no junit report\n{report}"
    cases = read_junit(job / "junit.xml")
    ready = [c.properties["ready_seconds"] for c in cases if "ready_seconds" in c.properties]
    print(
        f"guest: {len(cases)} tests in {sum(c.seconds for c in cases):.0f} s; the role's unit"
        f" was ready (production pools) after {ready[0] if ready else '?'} s",
        file=sys.stderr,
    )
    bad = [c for c in cases if c.outcome in ("failed", "error")]
    assert not bad, (
        "failed in the guest:\n"
        + "\n".join(f"- {c.file}::{c.name}: {c.message[:600]}" for c in bad)
        + f"\n{report}"
    )
    skipped = [c for c in cases if c.outcome == "skipped" and applies_to_bubblewrap(c)]
    assert not skipped, "skipped in the guest: " + "; ".join(
        f"{c.name}: {c.message}" for c in skipped
    )
    passed = {c.name for c in cases if c.outcome == "passed"}
    missing = [name for name in REQUIRED if name not in passed]
    assert not missing, f"did not run in the guest: {missing}\n{report}"
    assert outcome.status == 0, f"the guest's pytest exited {outcome.status}\n{report}"
