"""A second server process, for the no-lost-update tests: N concurrent counter calls.

Usage: ``python counter_worker.py (redis URL | sqlite PATH) CALLS``. It opens its own
store (its own connection pool / file handle), prints ``ready``, waits for a line on
stdin (so that several workers start at the same moment), then runs CALLS
concurrent transactions of the seed's counter script and prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from reflow_microsandbox.state import RedisStore, SqliteStore, StateStore


async def main(kind: str, target: str, calls: int) -> None:
    store: StateStore = (
        RedisStore(target, lock_timeout=60)
        if kind == "redis"
        else SqliteStore(target, lock_timeout=60)
    )
    await store.open()

    async def counter_call() -> None:
        async with store.transaction("default", "test_actor") as tx:
            counter = await tx.get("counter", 0)
            await asyncio.sleep(0.001)
            await tx.set("counter", counter + 1)

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(counter_call() for _ in range(calls)))
    await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
