"""Redis crashed and restarted, then unreachable for 10 s, under load on two nodes.

Redis runs the rendered redis.conf (append-only file, ``appendfsync everysec``).
What must hold: calls that need state fail with ``state_error`` meanwhile, calls that
do not are unaffected, and both kinds succeed again afterwards without a restart of
the control plane; every update a client saw acknowledged is still there after the
crash; no update is applied twice or in part, and none that the client saw fail.
The ledger actor appends the call's token to a list and counts it in a second key,
in one call: a doubled update shows as a repeated token, a partial one as a count
that differs from the list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from reflow_microsandbox.state.codec import decode_value, state_key

from .conftest import StartDeployment
from .deployment import Deployment
from .loadgen import OK, ActorInstance, Answer, Outcome, open_loop
from .observe import load_average

LEDGERS = 6
STATE_ERROR = "state_error"


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stored_ledgers(deployment: Deployment) -> dict[str, tuple[list[str], int]]:
    """Each ledger's (tokens, total) as stored in Redis."""
    assert deployment.redis is not None
    client = aioredis.from_url(deployment.redis.url)
    try:
        ledgers = {}
        for index in range(LEDGERS):
            instance = f"ledger-{index}"
            tokens = await client.get(state_key("default", instance, "tokens"))
            total = await client.get(state_key("default", instance, "total"))
            ledgers[instance] = (
                decode_value(tokens) if tokens is not None else [],
                decode_value(total) if total is not None else 0,
            )
        return ledgers
    finally:
        await client.aclose()


async def test_redis_crash_and_outage_under_load_fail_clearly_recover_and_lose_nothing(
    start_deployment: StartDeployment,
) -> None:
    deployment = await start_deployment()
    redis = deployment.redis
    assert redis is not None
    pids = {name: node.process.pid for name, node in deployment.nodes.items() if node.process}
    url = deployment.url()
    ledgers = [ActorInstance(url, "ledger", instance=f"ledger-{i}") for i in range(LEDGERS)]
    echo = ActorInstance(url, "echo", instance="stateless")
    outcomes: list[Outcome] = []
    phase = ["before"]
    phases: dict[int, str] = {}

    async def call(index: int) -> Answer:
        phases[index] = phase[0]
        if index % 5 == 4:
            return await echo.call({"data": index})
        return await ledgers[index % LEDGERS].call({"token": f"t{index}"})

    def since(name: str, kind: str) -> int:
        return sum(1 for o in outcomes if phases[o.index] == name and o.kind == kind)

    stop = asyncio.Event()
    load = asyncio.create_task(open_loop(20, 120, call, stop=stop, on_outcome=outcomes.append))
    try:
        await wait_for(lambda: since("before", OK) >= 20, "20 calls before the crash")

        # 1. Redis crashes (SIGKILL: no shutdown, no final fsync) and comes back.
        phase[0] = "crashed"
        await asyncio.to_thread(redis.kill)
        await wait_for(lambda: since("crashed", STATE_ERROR) >= 3, "state errors after the crash")
        status, body = await deployment.ready("a")
        assert status == 503 and any("state store" in r for r in body["reasons"]), body
        phase[0] = "restarted"
        await asyncio.to_thread(redis.start)
        await wait_for(lambda: since("restarted", OK) >= 20, "calls served after the restart")

        # 2. Redis unreachable for 10 s: the process is frozen, connections hang.
        phase[0] = "frozen"
        redis.pause()
        frozen_at = time.monotonic()
        try:
            await wait_for(lambda: since("frozen", STATE_ERROR) >= 3, "state errors while frozen")
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - frozen_at)))
        finally:
            redis.resume()
        phase[0] = "resumed"
        await wait_for(lambda: since("resumed", OK) >= 20, "calls served after the outage")
    finally:
        stop.set()
        run = await load
        for client in [*ledgers, echo]:
            await client.close()
    print(f"\n[load average {load_average()}] {run.summary.line()}")
    for name in ("before", "crashed", "restarted", "frozen", "resumed"):
        kinds = sorted({o.kind for o in run.outcomes if phases[o.index] == name})
        print(f"  {name:<10} {kinds}")

    # Only state errors, only for calls that need state.
    stateless = [o for o in run.outcomes if o.index % 5 == 4]
    assert {o.kind for o in stateless} == {OK}
    assert {o.kind for o in run.outcomes} <= {OK, STATE_ERROR}, run.summary.errors
    # No restart of the control plane: the same processes serve, and are ready.
    for name, node in deployment.nodes.items():
        assert node.process is not None and node.process.pid == pids[name]
        assert node.process.poll() is None
        assert (await deployment.ready(name))[0] == 200

    # Every acknowledged update is stored once and whole; no failed one is.
    stored = await stored_ledgers(deployment)
    for index in range(LEDGERS):
        instance = f"ledger-{index}"
        tokens, total = stored[instance]
        mine = [o for o in run.outcomes if o.index % 5 != 4 and o.index % LEDGERS == index]
        acknowledged = {f"t{o.index}" for o in mine if o.kind == OK}
        failed = {f"t{o.index}" for o in mine if o.kind != OK}
        assert len(tokens) == len(set(tokens)), f"{instance}: an update applied twice"
        assert total == len(tokens), f"{instance}: an update applied in part"
        assert acknowledged <= set(tokens), f"{instance}: lost {acknowledged - set(tokens)}"
        assert not failed & set(tokens), f"{instance}: failed calls applied {failed & set(tokens)}"
