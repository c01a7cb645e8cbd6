"""A short load through the real balancer onto two real nodes: every call is answered,
no state update is lost or doubled. The figures are printed (``-s`` shows them);
``bench/load.py`` measures for real. Nothing here asserts a speed."""

from __future__ import annotations

from collections import defaultdict

from .conftest import StartDeployment
from .loadgen import OK, ActorInstance, guide_arrival, open_loop, round_robin
from .observe import load_average


async def test_open_loop_load_through_the_balancer_is_answered_and_loses_no_update(
    start_deployment: StartDeployment,
) -> None:
    deployment = await start_deployment()
    # The seed example under the guide's name: a 10 kB push, a state counter.
    instances = [
        ActorInstance(deployment.url(), "test", instance=f"test-{i}") for i in range(16)
    ]
    try:
        warmup = await open_loop(20, 1, round_robin(instances, lambda i: {"input": i}))
        assert warmup.summary.errors == {}, warmup.summary.line()
        run = await open_loop(60, 4, round_robin(instances, lambda i: {"input": i}))
    finally:
        for instance in instances:
            await instance.close()
    print(f"\n[load average {load_average()}] {run.summary.line()}")
    assert run.summary.errors == {}, [o for o in run.outcomes if o.kind != OK][:5]
    assert run.summary.ok == 240

    # Each instance's counter advanced once per call, whichever node served it:
    # the values one instance saw are exactly 0..n-1 (nothing lost, nothing twice).
    seen: dict[int, list[int]] = defaultdict(list)
    for outcome in warmup.outcomes + run.outcomes:
        assert outcome.outputs is not None
        seen[outcome.index % len(instances)].append(outcome.outputs["counter"])
    for counters in seen.values():
        assert sorted(counters) == list(range(len(counters)))


async def test_the_guides_artillery_scenario_is_answered(
    start_deployment: StartDeployment,
) -> None:
    deployment = await start_deployment(nodes=("a",))
    run = await open_loop(10, 3, lambda _: guide_arrival(deployment.url()))
    print(f"\n[load average {load_average()}] artillery scenario: {run.summary.line()}")
    assert run.summary.errors == {}, [o for o in run.outcomes if o.kind != OK][:5]
    assert {o.outputs["status"] for o in run.outcomes if o.outputs} == {"success"}
