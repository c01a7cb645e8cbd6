"""A node killed (SIGKILL) or stopped (SIGTERM) behind the real balancer, under load.

What must hold: clients that reconnect, as Reflow's does before its next call, carry on
through the other node; every call is answered or fails at once with an error the
client sees (none waits out Reflow's 30 s); a killed node's sandboxes die with it; a
stopped node answers every call it had in flight before it exits.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import defaultdict

from websockets.asyncio.client import connect

from tests.server.conftest import alive

from .conftest import StartDeployment
from .deployment import NODE_ADDRESSES, metric_value
from .loadgen import CONNECTION, OK, ActorInstance, Outcome, open_loop, round_robin
from .observe import cgroup_tasks, load_average, sandbox_cgroups


async def wait_until(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def per_instance(outcomes: list[Outcome], instances: int) -> dict[int, list[str]]:
    kinds: dict[int, list[str]] = defaultdict(list)
    for outcome in sorted(outcomes, key=lambda o: o.index):
        kinds[outcome.index % instances].append(outcome.kind)
    return kinds


async def test_a_node_killed_under_load_loses_no_call_silently_and_clients_carry_on(
    start_deployment: StartDeployment,
) -> None:
    deployment = await start_deployment()
    instances = [ActorInstance(deployment.url(), "echo", instance=f"e{i}") for i in range(12)]
    calls = round_robin(instances, lambda i: {"data": i})
    try:
        for instance in instances:
            assert (await instance.call({"data": 0}))[0] == OK
        node = deployment.nodes["a"]
        assert node.process is not None
        pid = node.process.pid
        killed = asyncio.Event()
        done: list[Outcome] = []

        async def kill_node_a() -> None:
            await wait_until(lambda: len(done) >= 60, "60 calls before the kill")
            sandboxes.update(deployment.sandbox_pids("a"))
            cgroups.extend(sandbox_cgroups(pid))
            node.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            killed.set()

        sandboxes: set[int] = set()
        cgroups: list = []
        killer = asyncio.create_task(kill_node_a())
        run = await open_loop(40, 8, calls, on_outcome=done.append)
        await killer
    finally:
        for instance in instances:
            await instance.close()
    print(f"\n[load average {load_average()}] node a SIGKILLed: {run.summary.line()}")

    kinds = {o.kind for o in run.outcomes}
    assert kinds <= {OK, CONNECTION}, run.summary.errors  # no timeout, nothing else
    # Each client failed only for the calls it had in flight on the dead node, then
    # went on through the other node: its failures are one run, and it ends served.
    for index, sequence in per_instance(run.outcomes, len(instances)).items():
        runs = [kind for kind, _ in itertools.groupby(sequence)]
        assert runs in (["ok"], ["ok", "connection", "ok"]), (index, sequence)
    assert any(i.dials > 1 for i in instances), "no client had to reconnect"

    # The killed node's sandboxes are gone, and its cgroups are empty.
    assert sandboxes, "node a had no sandbox"
    await wait_until(lambda: not any(alive(p) for p in sandboxes), "the sandboxes to die")
    assert all(cgroup_tasks(path) == 0 for path in cgroups)
    status, _ = await deployment.ready("b")
    assert status == 200


async def test_a_node_stopped_under_load_answers_its_calls_and_new_connections_go_elsewhere(
    start_deployment: StartDeployment,
) -> None:
    deployment = await start_deployment(changes={"server": {"drain_timeout": 20.0}})
    node = deployment.nodes["a"]
    assert node.process is not None
    instances = [ActorInstance(deployment.url(), "slow", instance=f"s{i}") for i in range(8)]
    on_a: list[ActorInstance] = []
    try:
        # Connect one by one (least connections spreads them) and note which reached
        # node a, by its own count of open connections.
        for instance in instances:
            before = metric_value(await deployment.metrics("a"), "microsandbox_ws_connections")
            assert (await instance.call({"seconds": 0}))[0] == OK
            after = metric_value(await deployment.metrics("a"), "microsandbox_ws_connections")
            if after > before:
                on_a.append(instance)
        assert len(on_a) >= 2, "fewer than two connections reached node a"
        busy = [i for i in instances if i is not on_a[-1]]
        idle_on_a = on_a[-1]

        in_flight = [asyncio.create_task(i.call({"seconds": 3})) for i in busy]
        # SIGTERM once node a runs its share of them (the ones on a, all but the idle
        # one): the drain must then answer calls in flight, not ones still to come.
        running_on_a = len(on_a) - 1
        deadline = time.monotonic() + 30
        while True:
            text = await deployment.metrics("a")
            if metric_value(text, "microsandbox_active_sandboxes", state="busy") >= running_on_a:
                break
            assert time.monotonic() < deadline, "node a did not start its calls"
            await asyncio.sleep(0.02)
        node.process.send_signal(signal.SIGTERM)

        # While node a drains, a new connection is served, and not by node a: its
        # listener is closed.
        newcomer = ActorInstance(deployment.url(), "echo", instance="newcomer")
        assert (await newcomer.call({"data": "hi"})) == (OK, "", {"out": "hi"})
        await newcomer.close()
        refused = False
        try:
            async with connect(f"ws://{NODE_ADDRESSES['a']}:{deployment.rendered.ws_port}/"):
                pass
        except OSError:
            refused = True
        assert refused or node.process.poll() is not None
        # A client idle on node a makes its next call meanwhile: the node closed its
        # connection at once, so the call goes through the balancer to node b.
        assert (await idle_on_a.call({"seconds": 0}))[0] == OK
        assert node.process.poll() is None, "node a stopped before its calls ended"

        answers = await asyncio.gather(*in_flight)
        assert [kind for kind, _, _ in answers] == [OK] * len(busy), answers
        assert await asyncio.to_thread(node.wait, 60) == 0, node.log

        # Every client goes on: those that were on node a reconnect to node b.
        after_stop = await asyncio.gather(*(i.call({"seconds": 0}) for i in instances))
        assert [kind for kind, _, _ in after_stop] == [OK] * len(instances), after_stop
        assert all(i.dials == 2 for i in on_a)
    finally:
        for instance in instances:
            await instance.close()
    print(f"\n[load average {load_average()}] drained node a: {len(on_a)} of 8 clients on it")
