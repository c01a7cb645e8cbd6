"""State store benchmark: prints figures (not a test; nothing here asserts a speed).

    .venv/bin/python bench/state_bench.py [--calls 2000]

For the Redis store (a private redis-server) and the SQLite store (a temp file):

1. One counter transaction (lock, GET, buffered SET, commit script) back to back,
   against a bare redis-py GET + SET on the same server: p50/p99 and the ratio,
   i.e. the price of the per-actor lock and the atomic commit.
2. Throughput of 200 concurrent counter calls spread over 200 actors, and of 200
   on ONE actor (which the lock serialises, by design).
3. A 100 KB value: stored size with zstd vs plain JSON, and its round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reflow_microsandbox.state import RedisStore, SqliteStore, StateStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def row(label: str, value: str) -> None:
    print(f"  {label:<52} {value}")


async def timed(calls: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await one(i)
        times.append(time.perf_counter() - started)
    return times


def p(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100)[int(q) - 1]


async def counter_call(store: StateStore, actor: str) -> None:
    async with store.transaction("bench", actor) as tx:
        value = await tx.get("counter", 0)
        await tx.set("counter", value + 1)


async def bench_store(name: str, store: StateStore, calls: int) -> list[float]:
    await store.open()
    try:
        await timed(50, lambda i: counter_call(store, "warm"))
        times = await timed(calls, lambda i: counter_call(store, "seq"))
        print(f"\n{name}")
        row(
            "counter transaction p50 / p99",
            f"{p(times, 50) * 1e6:8.0f} / {p(times, 99) * 1e6:.0f} us",
        )
        for label, actors in (
            ("200 actors", [f"a{i}" for i in range(200)]),
            ("1 actor", ["hot"] * 200),
        ):
            started = time.perf_counter()
            for _ in range(5):
                await asyncio.gather(*(counter_call(store, actor) for actor in actors))
            elapsed = time.perf_counter() - started
            row(f"200 concurrent calls on {label}", f"{1000 / elapsed:8.0f} calls/s")
        big = {"blob": "lorem ipsum dolor sit amet " * 4000}
        started = time.perf_counter()
        async with store.transaction("bench", "big") as tx:
            await tx.set("v", big)
        async with store.transaction("bench", "big") as tx:
            assert await tx.get("v") == big
        row(
            "100 KB value set + get (two transactions)",
            f"{(time.perf_counter() - started) * 1e3:8.2f} ms",
        )
        return times
    finally:
        await store.close()


async def main(calls: int) -> None:
    with RedisServer() as server:
        client = aioredis.from_url(server.url)
        try:
            await client.set("bare:k", 0)

            async def bare(_: int) -> None:
                value = int(await client.get("bare:k") or 0)
                await client.set("bare:k", value + 1)

            await timed(50, bare)
            bare_times = await timed(calls, bare)
            store_times = await bench_store("redis store", RedisStore(server.url), calls)
            row("bare redis-py GET + SET p50", f"{p(bare_times, 50) * 1e6:8.0f} us")
            row(
                "ratio transaction / bare (p50)", f"{p(store_times, 50) / p(bare_times, 50):8.2f} x"
            )
            big = await client.get("bench:big:v")
            assert big is not None
            plain = len('{"blob":"' + "lorem ipsum dolor sit amet " * 4000 + '"}')
            row("100 KB value stored as", f"{len(big):8d} bytes (plain JSON {plain})")
        finally:
            await client.aclose()
    with tempfile.TemporaryDirectory() as folder:
        await bench_store("sqlite store", SqliteStore(str(Path(folder) / "state.db")), calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
