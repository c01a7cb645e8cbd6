"""The Docker engine restarted while the Docker backend is in use.

A private dockerd of the test's own (:mod:`.private_engine`; the shared engine is never
touched), the runner images copied into it, one node on the Docker backend pointed at it
(``sandbox.docker.docker_host``). Under the load of another actor, with a call running,
the engine is stopped (SIGTERM, then in a second round SIGKILL, which leaves its
containerd and shims behind) and started again. What must hold:

* the call running in the engine's container fails at once with ``crashed`` and a detail
  that names what happened (no call waits out Reflow's 30 s);
* every other call is answered: served, or failed ``crashed`` / ``unavailable``;
* while the engine is down, ``/ready`` is either 200 (warm sandboxes left) or 503 with
  the reason (``python sandboxes cannot be started: ...``), never silently not ready;
* once the engine is back, the pool refills to its minimum, ``/ready`` is 200 and the
  actor is served again, with no restart of the control plane;
* the containers the old engine left behind are removed: the engine lists exactly one
  of the node's containers per live sandbox, and none after the node stopped.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.docker.images import require_docker_images

from .conftest import StartDeployment
from .deployment import Deployment, metric_value
from .loadgen import OK, ActorInstance, Outcome, open_loop, round_robin
from .observe import OWNER_PID_LABEL, holding, load_average
from .private_engine import PrivateEngine, unavailable_reason

MIN_WARM = 2
ANSWERED = {OK, "crashed", "unavailable"}


@pytest.fixture
async def engine() -> AsyncIterator[PrivateEngine]:
    require_docker_images()  # skips without the shared engine; builds the images
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no private Docker engine: {reason}")
    shared_bridge = Path("/sys/class/net/docker0")
    had_bridge = await asyncio.to_thread(shared_bridge.exists)
    private = PrivateEngine()
    try:
        try:
            await asyncio.to_thread(private.start)
        except RuntimeError as error:
            pytest.skip(f"a private dockerd cannot run here: {error}")
        await asyncio.to_thread(private.load_images)
        yield private
    finally:
        await asyncio.to_thread(private.close)
    # The shared engine is never touched: its default bridge is still there.
    still = await asyncio.to_thread(shared_bridge.exists)
    assert still or not had_bridge, "the private engine deleted the shared engine's docker0"


async def wait_until(check: object, what: str, timeout: float = 90.0) -> None:
    """Poll the coroutine function ``check`` (bounded) until it returns true."""
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def warm(deployment: Deployment) -> float:
    text = await deployment.metrics("a")
    return metric_value(text, "microsandbox_active_sandboxes", language="python", state="warm")


async def one_container_per_sandbox(deployment: Deployment, engine: PrivateEngine) -> None:
    """Wait (bounded) until the engine lists as many of the node's containers as the node
    has live sandboxes: a sandbox being started may briefly have its container before the
    pool counts it; a container left behind never converges."""
    node = deployment.nodes["a"].process
    assert node is not None
    label = f"label={OWNER_PID_LABEL}={node.pid}"
    found: list[str] = []
    live = -1.0

    async def converged() -> bool:
        nonlocal found, live
        live = metric_value(await deployment.metrics("a"), "microsandbox_active_sandboxes")
        found = await asyncio.to_thread(engine.containers, label)
        return len(found) == live

    try:
        await wait_until(converged, "one container per live sandbox", 60)
    except AssertionError:
        raise AssertionError(f"{len(found)} containers for {live:.0f} live sandboxes") from None


async def restart_once(
    deployment: Deployment, engine: PrivateEngine, holder: ActorInstance, how: signal.Signals
) -> None:
    """One restart of the engine (stopped with ``how``) with a call running in it."""
    assert (await holder.call({"marker": "warm", "seconds": 0}))[0] == OK
    await one_container_per_sandbox(deployment, engine)
    marker = f"held-{how.name}"
    call = asyncio.create_task(holder.call({"marker": marker, "seconds": 20}))

    async def running() -> bool:
        assert not call.done(), call.result()
        return bool(holding(await asyncio.to_thread(engine.container_processes), marker))

    await wait_until(running, "the call running in its container", 60)
    started = time.monotonic()
    await asyncio.to_thread(engine.stop, how)
    down = []
    for _ in range(3):  # what /ready says while the engine is away
        status, body = await deployment.ready("a")
        down.append((status, body))
        assert status == 200 or body.get("reasons"), body
    kind, detail, _ = await call
    print(f"\n[{how.name}] held call: {kind}: {detail} ({time.monotonic() - started:.1f} s)")
    print(f"  /ready while down: {down}")
    assert kind == "crashed", (kind, detail)
    assert "engine" in detail or "runner" in detail, detail
    await asyncio.to_thread(engine.start)

    async def refilled() -> bool:
        ready = (await deployment.ready("a"))[0] == 200
        return ready and await warm(deployment) >= MIN_WARM

    await wait_until(refilled, f"the pool refilled and /ready 200 after {how.name}")
    back = await holder.call({"marker": "after", "seconds": 0})
    assert back[0] == OK, back
    await one_container_per_sandbox(deployment, engine)
    print(f"  refilled, ready and served {time.monotonic() - started:.1f} s after")


@pytest.mark.docker
async def test_the_docker_engine_restarted_under_load(
    start_deployment: StartDeployment, engine: PrivateEngine
) -> None:
    changes = {
        "sandbox": {
            "backend": "docker",
            "memory_mb": 128,
            "docker": {"docker_host": engine.host},
            "pool": {"python": {"min_instances": MIN_WARM}, "nodejs": {"min_instances": 0}},
        }
    }
    deployment = await start_deployment(nodes=("a",), changes=changes)
    others = [ActorInstance(deployment.url(), "echo", instance=f"other{i}") for i in range(3)]
    holder = ActorInstance(deployment.url(), "holder", instance="holder")
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    calls = round_robin(others, lambda i: {"data": i})
    load = asyncio.create_task(open_loop(10, 600, calls, stop=stop, on_outcome=outcomes.append))
    try:
        for how in (signal.SIGTERM, signal.SIGKILL):
            await restart_once(deployment, engine, holder, how)
    finally:
        stop.set()
        run = await load
        for client in [*others, holder]:
            await client.close()
    kinds = sorted({o.kind for o in outcomes})
    print(f"[load average {load_average()}] other actor: {run.summary.line()}")
    assert set(kinds) <= ANSWERED, kinds
    node = deployment.nodes["a"].process
    assert node is not None
    pid = node.pid
    await asyncio.to_thread(deployment.stop)
    assert engine.containers(f"label={OWNER_PID_LABEL}={pid}") == []
