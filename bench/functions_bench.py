"""Deploy-then-call benchmark: prints figures (not a test; nothing here asserts a speed).

    .venv/bin/python bench/functions_bench.py [--deploys 20] [--calls 500]

One in-process server (bubblewrap sandboxes, state in a private redis-server), driven
over real sockets:

1. Deploy of code never seen (parse, syntax check in a sandbox, store) against a deploy
   of the same code again (content-addressed: one store look-up and one record), p50.
2. Warm ``process`` round trip on ``/ws/<function_id>`` against the same script as a
   folder actor on ``/`` (the baseline, measured in the same run): the difference is
   the per-call store look-up that lets any node serve any function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reflow_microsandbox.config import parse_config  # noqa: E402
from reflow_microsandbox.server import Server  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SCRIPT = (
    '@actor(name="bench_echo")\n'
    "def process(context):\n"
    '    return {"out": context.get_input("data")}\n'
)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} ms"


async def round_trips(conn: ClientConnection, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        call_id = str(uuid.uuid4())
        frame = json.dumps({"jsonrpc": "2.0", "id": call_id, "method": "process", "params": {
            "actor_id": "bench_echo", "payload": {"data": 1}, "config": {},
            "state": {"namespace": "default", "actor_id": "bench_echo"}}})  # fmt: skip
        started = time.perf_counter()
        await conn.send(frame)
        while json.loads(await conn.recv()).get("id") != call_id:
            pass
        times.append(time.perf_counter() - started)
    return times


def script_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="msb-fbench-"))
    folder.chmod(0o755)  # the dependency cache below it must be readable by sandboxes
    (folder / "bench_echo.py").write_text(SCRIPT)
    return folder


async def main(folder: Path, deploys: int, calls: int) -> None:
    with RedisServer() as redis:
        config = parse_config({
            "server": {"metrics_port": 0}, "redis": {"url": redis.url},
            "scripts": {"folders": [str(folder)]}, "logging": {"level": "warning"},
            "functions": {"dependency_cache": str(folder / "deps")},
            "sandbox": {"pool": {"python": {"min_instances": 2}, "nodejs": {"min_instances": 0}}},
        })  # fmt: skip
        async with Server(config, ephemeral_ports=True) as server, aiohttp.ClientSession() as http:
            await server.pool.wait_warmed(60)
            url = f"http://127.0.0.1:{server.http_port}/api/v1/functions"

            async def deploy(code: str) -> tuple[float, str]:
                body = {"name": "bench_echo", "runtime": "python", "code": code,
                        "handler": "bench_echo", "timeout_seconds": 300, "dependencies": None}
                started = time.perf_counter()
                async with http.post(url, json=body) as response:
                    answer = await response.json()
                return time.perf_counter() - started, answer["function_id"]

            fresh = [(await deploy(SCRIPT + f"# {i}\n"))[0] for i in range(deploys)]
            again = [(await deploy(SCRIPT))[0] for _ in range(deploys)]
            _, function_id = await deploy(SCRIPT)
            base = f"ws://127.0.0.1:{server.ws_port}"
            async with connect(base + "/") as plain, connect(f"{base}/ws/{function_id}") as fn:
                await round_trips(plain, 50)
                await round_trips(fn, 50)
                baseline = await round_trips(plain, calls)
                function = await round_trips(fn, calls)
    print(f"deploy, new code (syntax check in a sandbox)  p50 {ms(fresh)}")
    print(f"deploy, same code again (content-addressed)   p50 {ms(again)}"
          f"  ({statistics.median(fresh) / statistics.median(again):.1f}x cheaper)")
    print(f"warm call, folder actor on /  (baseline)      p50 {ms(baseline)}")
    print(f"warm call, deployed function on /ws/<id>      p50 {ms(function)}"
          f"  ({statistics.median(function) / statistics.median(baseline):.2f}x the baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    scripts = script_folder()
    try:
        asyncio.run(main(scripts, args.deploys, args.calls))
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
