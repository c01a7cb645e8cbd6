"""Sandboxes killed from outside while calls run, on both backends.

Bubblewrap: SIGKILL of the runner process, then of its ``bwrap``. Docker: ``docker
kill`` of the container, then SIGKILL of the container's process from the host. What
must hold: the call in that sandbox fails with a clear ``crashed`` error, calls of
other actors are unaffected, the pool refills to its minimum, the node stays ready,
and the killed sandbox leaves no cgroup behind.

Restarting the Docker engine is test_engine_restart.py (on a private engine: the shared
one would take every other user's containers down with it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.docker.images import require_docker_images
from tests.server.conftest import descendants

from .conftest import StartDeployment
from .deployment import Deployment, metric_value
from .loadgen import OK, ActorInstance, Answer, Run, open_loop, round_robin
from .observe import (
    container_init,
    containers_of,
    holding,
    load_average,
    parent_of,
    sandbox_cgroups,
)

MIN_WARM = 2


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def warm_sandboxes(deployment: Deployment) -> float:
    text = await deployment.metrics("a")
    return metric_value(text, "microsandbox_active_sandboxes", language="python", state="warm")


async def refilled_and_ready(deployment: Deployment) -> None:
    deadline = time.monotonic() + 60
    while await warm_sandboxes(deployment) < MIN_WARM:
        assert time.monotonic() < deadline, "the pool did not refill to its minimum"
        await asyncio.sleep(0.1)
    status, body = await deployment.ready("a")
    assert status == 200, body


class Bystanders:
    """Calls of another actor that go on, open-loop, while sandboxes are killed."""

    def __init__(self, deployment: Deployment) -> None:
        self.clients = [
            ActorInstance(deployment.url(), "echo", instance=f"by{i}") for i in range(3)
        ]
        self.stop = asyncio.Event()
        self.answered = 0
        self.task: asyncio.Task[Run] | None = None

    def start(self) -> None:
        calls = round_robin(self.clients, lambda i: {"data": i})
        self.task = asyncio.create_task(
            open_loop(20, 300, calls, stop=self.stop, on_outcome=self._count)
        )

    def _count(self, outcome: object) -> None:
        self.answered += 1

    async def finish(self) -> Run:
        """Stop once at least 40 calls were answered (so that they overlapped the kills)."""
        await wait_for(lambda: self.answered >= 40, "40 calls of the bystanders")
        self.stop.set()
        assert self.task is not None
        run = await self.task
        for client in self.clients:
            await client.close()
        return run


async def one_each(deployment: Deployment, count: Callable[[], int], what: str) -> None:
    """Wait (bounded) until ``count()`` equals the node's live sandboxes: a sandbox
    being started may briefly have its cgroup or container before the pool counts it,
    a leaked one never converges."""
    deadline = time.monotonic() + 30
    while True:
        text = await deployment.metrics("a")
        live = metric_value(text, "microsandbox_active_sandboxes")
        found = await asyncio.to_thread(count)  # it may run the docker CLI
        if found == live:
            return
        assert time.monotonic() < deadline, f"{found} {what} for {live:.0f} live sandboxes"
        await asyncio.sleep(0.1)


async def kill_during_call(
    holder: ActorInstance, marker: str, find_victim: Callable[[], int], how: Callable[[int], None]
) -> Answer:
    """Start a call that holds ``marker`` open, find its sandbox, kill it ``how``.
    (``find_victim`` runs in a thread: it may run the docker CLI.)"""
    call = asyncio.create_task(holder.call({"marker": marker, "seconds": 20}))
    deadline = time.monotonic() + 60
    while not (victim := await asyncio.to_thread(find_victim)):
        assert time.monotonic() < deadline, f"no sandbox was seen holding {marker}"
        await asyncio.sleep(0.05)
    how(victim)
    return await call


Kill = tuple[str, Callable[[str], Callable[[], int]], Callable[[int], None]]
"""(what is killed, a finder of the victim's pid for a marker, how the victim is killed)."""


async def kill_each(deployment: Deployment, cases: list[Kill]) -> None:
    """Under the bystanders' load, for each case: a call holding a marker, its sandbox
    killed; the call fails ``crashed``, the pool refills, the node is ready and the
    actor is served again; every bystander call is answered."""
    bystanders = Bystanders(deployment)
    bystanders.start()
    holder = ActorInstance(deployment.url(), "holder", instance="holder")
    try:
        for index, (what, find, how) in enumerate(cases):
            marker = f"kill-{index}"
            kind, detail, _ = await kill_during_call(holder, marker, find(marker), how)
            print(f"\n  {what}: {kind}: {detail}")
            assert kind == "crashed" and "runner" in detail, (what, kind, detail)
            await refilled_and_ready(deployment)
            assert (await holder.call({"marker": "after", "seconds": 0}))[0] == OK
    finally:
        run = await bystanders.finish()
        await holder.close()
    print(f"[load average {load_average()}] bystanders: {run.summary.line()}")
    assert run.summary.errors == {}


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def test_bubblewrap_runner_and_bwrap_killed_from_outside(
    start_deployment: StartDeployment,
) -> None:
    changes = {"sandbox": {"pool": {"python": {"min_instances": MIN_WARM}}}}
    deployment = await start_deployment(nodes=("a",), changes=changes)
    node = deployment.nodes["a"].process
    assert node is not None

    def runner_of(marker: str) -> Callable[[], int]:
        def find() -> int:
            found = holding(deployment.sandbox_pids("a"), marker)
            return found[0] if found else 0

        return find

    def bwrap_of(marker: str) -> Callable[[], int]:
        def find() -> int:
            pid = runner_of(marker)()
            while pid and parent_of(pid) != node.pid:  # climb to the bwrap we started
                pid = parent_of(pid)
            return pid

        return find

    await kill_each(
        deployment,
        [("SIGKILL of the runner", runner_of, sigkill), ("SIGKILL of bwrap", bwrap_of, sigkill)],
    )
    # Every cgroup left belongs to a live sandbox.
    await one_each(deployment, lambda: len(sandbox_cgroups(node.pid)), "cgroups")


@pytest.mark.docker
async def test_docker_containers_killed_from_outside(start_deployment: StartDeployment) -> None:
    require_docker_images()
    changes = {
        "sandbox": {
            "backend": "docker",
            "memory_mb": 128,
            "pool": {"python": {"min_instances": MIN_WARM}, "nodejs": {"min_instances": 0}},
        }
    }
    deployment = await start_deployment(nodes=("a",), changes=changes)
    node = deployment.nodes["a"].process
    assert node is not None

    def container_holding(marker: str) -> tuple[str, int] | None:
        for container in containers_of(node.pid):
            init = container_init(container)
            if init and holding({init} | descendants(init), marker):
                return container, init
        return None

    def docker_kill(marker: str) -> Callable[[], int]:
        def find() -> int:
            found = container_holding(marker)
            if found is None:
                return 0
            subprocess.run(["docker", "kill", found[0]], capture_output=True, timeout=60)
            return found[1]

        return find

    def init_of(marker: str) -> Callable[[], int]:
        def find() -> int:
            found = container_holding(marker)
            return found[1] if found else 0

        return find

    await kill_each(
        deployment,
        [
            ("docker kill", docker_kill, lambda pid: None),
            ("SIGKILL of the container's process", init_of, sigkill),
        ],
    )
    # No container is left of the killed sandboxes: only live ones remain.
    await one_each(deployment, lambda: len(containers_of(node.pid)), "containers")
