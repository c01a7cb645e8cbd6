"""A storm from one actor (memory bombs, endless loops, output floods, from many
connections at once) while other actors keep calling.

What must hold: every call of the other actors is answered; each abusive call ends
with the error of the limit it broke (or is refused with ``pool_exhausted`` once the
abuser's queue is full); all sandboxes together never hold more memory than the
configured limits allow (``memory_mb`` per sandbox, ``max_instances`` sandboxes),
read from the host's cgroups; the node is ready afterwards. The others' latency
during the storm against before it is printed (``bench/load.py fairness`` measures
it properly); it is not asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from .conftest import StartDeployment
from .deployment import metric_value
from .loadgen import OK, ActorInstance, open_loop, round_robin
from .observe import host_available_bytes, load_average, memory_peak

MEMORY_MB = 128
PYTHON_MAX = 8
ABUSE = ("memory", "loop", "flood")
LIMIT_ERRORS = {"memory", "timeout", "output_too_large", "pool_exhausted"}


async def test_a_storm_from_one_actor_leaves_the_others_served_within_the_memory_limits(
    start_deployment: StartDeployment,
) -> None:
    changes = {
        "sandbox": {
            "memory_mb": MEMORY_MB,
            "call_timeout": 3.0,
            "max_output_bytes": 1024 * 1024,
            "pool": {
                "python": {"min_instances": 2, "max_instances": PYTHON_MAX},
                "max_per_actor": 4,
                "max_queued_per_actor": 16,
            },
        }
    }
    deployment = await start_deployment(nodes=("a",), changes=changes)
    node = deployment.nodes["a"].process
    assert node is not None
    quiet = [ActorInstance(deployment.url(), "echo", instance=f"quiet{i}") for i in range(3)]
    calls = round_robin(quiet, lambda i: {"data": i})
    abusers = [ActorInstance(deployment.url(), "abuser", instance=f"a{i}") for i in range(12)]
    storm_outcomes: list[str] = []
    stop = asyncio.Event()

    async def abuse(client: ActorInstance, start: int) -> None:
        for how in itertools.islice(itertools.cycle(ABUSE), start, None):
            if stop.is_set():
                return
            kind, _, _ = await client.call({"how": how})
            storm_outcomes.append(kind)

    try:
        await open_loop(20, 1, calls)  # warm
        before = await open_loop(20, 4, calls)
        available_before = host_available_bytes()
        lowest_available = available_before
        storm = [asyncio.create_task(abuse(c, i)) for i, c in enumerate(abusers)]
        during_task = asyncio.create_task(open_loop(20, 10, calls))
        while not during_task.done():
            lowest_available = min(lowest_available, host_available_bytes())
            await asyncio.sleep(0.1)
        during = await during_task
        stop.set()
        await asyncio.gather(*storm)
    finally:
        stop.set()
        for client in quiet + abusers:
            await client.close()

    peak = memory_peak(node.pid)
    limit = PYTHON_MAX * MEMORY_MB * 1024 * 1024
    print(
        f"\n[load average {load_average()}] others before: {before.summary.line()}\n"
        f"  others during the storm: {during.summary.line()}\n"
        f"  p99 during / before: {during.summary.p99 / before.summary.p99:.1f}x\n"
        f"  storm calls: {sorted((k, storm_outcomes.count(k)) for k in set(storm_outcomes))}\n"
        f"  sandboxes' memory peak {peak and peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB;"
        f" host MemAvailable fell by {(available_before - lowest_available) / 2**20:.0f} MiB"
    )
    assert before.summary.errors == {} and during.summary.errors == {}, during.summary.errors
    assert storm_outcomes and set(storm_outcomes) <= LIMIT_ERRORS, set(storm_outcomes)
    assert {"memory", "timeout", "output_too_large"} <= set(storm_outcomes)
    assert OK not in storm_outcomes
    # The cgroup peak counted the bombs (at least one reached its limit), and never the
    # sum of the limits.
    assert peak is not None and MEMORY_MB * 2**20 // 2 < peak <= limit

    deadline = time.monotonic() + 60
    while (await deployment.ready("a"))[0] != 200:
        assert time.monotonic() < deadline, "the node did not get ready after the storm"
        await asyncio.sleep(0.1)
    text = await deployment.metrics("a")
    assert metric_value(text, "microsandbox_active_sandboxes", state="warm") >= 2
