"""RPC benchmark: prints a table of figures (not a test; nothing here asserts a speed).

    .venv/bin/python bench/rpc_bench.py [--duration 10] [--calls 2000] [--connections 32]

What it measures, with the server started as a subprocess (``reflow-microsandbox
serve``, bubblewrap sandboxes, state in a private redis-server):

1. Warm ``process`` round trip over one WebSocket (p50/p99), against a bare
   ``websockets`` echo server (also a subprocess) answering the same payload: the
   ratio is the cost of JSON-RPC + pool + sandbox round trip (goal: <= 3x at p50).
2. The same doubling actor through our server and through an unsandboxed in-process
   JSON-RPC server (``bench/inprocess_server.py``, the shape of Reflow's own Python
   runtime server), by the same Reflow-style client in the same run: sequential round
   trips (p50/p99) and throughput of N connections calling back to back for D seconds,
   printed as ratios (issue goal: >= 0.5x the in-process calls/s, p50 <= 1.3x), with
   the CPU seconds per call of the server process and of its sandboxes (every process
   descended from the server, from ``/proc/<pid>/stat``).
3. A ``get_state`` + ``set_state`` call against a bare redis-py GET + SET (ratio).
4. A 1 MB payload echoed, as plain text and as zstd frames (round trip and bytes sent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml
import zstandard
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.redis_server import RedisServer  # noqa: E402

ACTORS = {
    "bench_echo.py": (
        '@actor(name="bench_echo")\n'
        "def process(context):\n"
        '    return {"out": context.get_input("data")}\n'
    ),
    "bench_double.py": (
        '@actor(name="bench_double")\n'
        "def process(context):\n"
        '    value = context.get_input("data")\n'
        '    return {"out": value * 2 if isinstance(value, (int, float)) else value}\n'
    ),
    "bench_state.py": (
        '@actor(name="bench_state")\n'
        "async def process(context):\n"
        '    value = await context.get_state("k", 0)\n'
        '    await context.set_state("k", value + 1)\n'
        '    return {"out": value}\n'
    ),
}

ECHO_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(conn):
    async for message in conn:
        await conn.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(actor: str, data: Any, id_: str) -> str:
    """The frame Reflow sends, with the actor's input."""
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": id_,
            "method": "process",
            "params": {
                "payload": {"data": data},
                "config": {},
                "state": {"namespace": "default", "actor_id": actor},
                "actor_id": actor,
                "timestamp": int(time.time() * 1000),
            },
        }
    )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> tuple[float, float, float]:
    """(CPU seconds of ``root``, of them in the kernel, CPU seconds of all its live
    descendants), user + system.

    Read from ``/proc/<pid>/stat`` (utime and stime, fields 14 and 15, in clock ticks:
    proc(5)). Descendants that exited between two readings are not counted; the
    benchmark's sandboxes stay alive for the whole measurement.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    system: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        system[int(entry)] = int(fields[12]) / CLOCK_TICKS
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    below = 0.0
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        below += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return times.get(root, 0.0), system.get(root, 0.0), below


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def round_trips(
    conn: ClientConnection, make: Callable[[int], str | bytes], calls: int
) -> list[float]:
    """Sequential round trips on one connection (skipping push frames); seconds each."""
    timings = []
    for i in range(calls):
        frame = make(i)
        started = time.perf_counter()
        await conn.send(frame)
        while True:
            reply = await conn.recv()
            if isinstance(reply, bytes) or '"id"' in reply[:40] or reply.startswith('{"jsonrpc"'):
                break
        timings.append(time.perf_counter() - started)
    return timings


async def timed(fn: Callable[[], Awaitable[Any]], calls: int) -> list[float]:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        timings.append(time.perf_counter() - started)
    return timings


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rows: list[tuple[str, str]] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def row(self, name: str, value: str) -> None:
        self.rows.append((name, value))
        print(f"  {name:<58} {value}", flush=True)

    # -- processes ------------------------------------------------------------------------

    def start_server(self, redis_url: str) -> tuple[int, int]:
        scripts = self.workdir / "scripts"
        scripts.mkdir()
        for name, text in ACTORS.items():
            (scripts / name).write_text(text)
        ws_port, http_port = free_port(), free_port()
        config = {
            "server": {"ws_port": ws_port, "http_port": http_port, "metrics_port": 0},
            "sandbox": {
                "pool": {
                    "python": {
                        "min_instances": self.args.sandboxes,
                        "max_instances": self.args.sandboxes + 4,
                    },
                    "nodejs": {"min_instances": 0},
                    "max_per_actor": self.args.sandboxes,
                },
            },
            "redis": {"url": redis_url},
            "scripts": {"folders": [str(scripts)]},
            "logging": {"level": "warning"},
        }
        path = self.workdir / "microsandbox.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSANDBOX_")}
        log = (self.workdir / "server.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "reflow_microsandbox", "serve", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        return ws_port, http_port

    async def wait_ready(self, http_port: int) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{http_port}/ready") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        log = (self.workdir / "server.log").read_text(errors="replace")
        raise SystemExit(f"the server did not get ready:\n{log}")

    def start_echo(self) -> int:
        return self.start_listener([sys.executable, "-c", ECHO_SERVER])

    def start_inprocess(self) -> int:
        return self.start_listener([sys.executable, str(REPO / "bench" / "inprocess_server.py")])

    def start_listener(self, command: list[str]) -> int:
        """Start a server that takes its port as last argument and prints a line when ready."""
        port = free_port()
        process = subprocess.Popen([*command, str(port)], stdout=subprocess.PIPE)
        self.processes.append(process)
        assert process.stdout is not None
        process.stdout.readline()
        return port

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    # -- measurements -----------------------------------------------------------------------

    async def latency(self, ws: str, echo_port: int) -> None:
        calls = self.args.calls
        payload = {"input": 42, "text": "hello"}
        async with connect(f"ws://127.0.0.1:{echo_port}/", compression=None) as conn:
            await round_trips(conn, lambda i: request("bench_echo", payload, f"w{i}"), 200)
            bare = await round_trips(
                conn, lambda i: request("bench_echo", payload, f"{i:08d}"), calls
            )
        async with connect(ws, compression=None) as conn:
            await round_trips(conn, lambda i: request("bench_echo", payload, f"w{i}"), 200)
            rpc = await round_trips(
                conn, lambda i: request("bench_echo", payload, f"{i:08d}"), calls
            )
        b50, b99 = percentile(bare, 0.5), percentile(bare, 0.99)
        r50, r99 = percentile(rpc, 0.5), percentile(rpc, 0.99)
        print("\nwarm process round trip, one connection, sequential calls")
        self.row("bare websockets echo p50 / p99", f"{b50 * 1e6:8.0f} us / {b99 * 1e6:8.0f} us")
        self.row("process (JSON-RPC + pool + sandbox) p50 / p99",
                 f"{r50 * 1e6:8.0f} us / {r99 * 1e6:8.0f} us")  # fmt: skip
        self.row("ratio at p50 (goal <= 3x)", f"{r50 / b50:8.1f} x")
        self.row("ratio at p99", f"{r99 / b99:8.1f} x")

    def start_profiler(self, pid: int, duration: float) -> subprocess.Popen[bytes]:
        """py-spy sampling ``pid`` for ``duration`` seconds into ``--profile`` (raw
        collapsed stacks: one line per stack, its sample count last)."""
        return subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(duration))),
             "-f", "raw", "-o", self.args.profile, "--nonblocking"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    async def throughput(
        self, ws: str, pid: int, profile: bool = False
    ) -> tuple[float, int, float, float, float, float]:
        """N connections calling the doubling actor back to back for D seconds.

        Returns (calls/s, errors, server CPU s per call, sandbox CPU s per call, server
        kernel CPU s per call, server CPU share of one core).
        """
        duration, connections = self.args.duration, self.args.connections
        counts = [0] * connections
        errors = [0] * connections
        deadline = 0.0

        async def worker(index: int) -> None:
            async with connect(ws, compression=None) as conn:
                await ready.wait()
                i = 0
                while time.perf_counter() < deadline:
                    await conn.send(request("bench_double", i, f"{index}-{i}"))
                    reply = json.loads(await conn.recv())
                    if "error" in reply:
                        errors[index] += 1
                    else:
                        counts[index] += 1
                    i += 1

        ready = asyncio.Event()
        tasks = [asyncio.create_task(worker(i)) for i in range(connections)]
        await asyncio.sleep(0.5)
        profiler = self.start_profiler(pid, duration) if profile else None
        server_before, kernel_before, sandboxes_before = cpu_seconds(pid)
        started = time.perf_counter()
        deadline = started + duration
        ready.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            await asyncio.to_thread(profiler.wait)
        server_after, kernel_after, sandboxes_after = cpu_seconds(pid)
        calls = max(1, sum(counts))
        return (
            sum(counts) / elapsed,
            sum(errors),
            (server_after - server_before) / calls,
            (sandboxes_after - sandboxes_before) / calls,
            (kernel_after - kernel_before) / calls,
            (server_after - server_before) / elapsed,
        )

    async def against_inprocess(self, ws: str, server_pid: int, baseline_port: int) -> None:
        """Our server and the unsandboxed in-process server, same client, same run."""
        baseline = f"ws://127.0.0.1:{baseline_port}/"
        baseline_pid = self.processes[-1].pid
        latencies: dict[str, tuple[float, float]] = {}
        for label, url in (("in-process", baseline), ("sandboxed", ws)):
            async with connect(url, compression=None) as conn:
                await round_trips(conn, lambda i: request("bench_double", i, f"w{i}"), 200)
                rpc = await round_trips(
                    conn, lambda i: request("bench_double", i, f"{i:08d}"), self.args.calls
                )
            latencies[label] = (percentile(rpc, 0.5), percentile(rpc, 0.99))
        print("\ndoubling actor: in-process server (no isolation) vs this server, "
              "one connection, sequential")  # fmt: skip
        (i50, i99), (s50, s99) = latencies["in-process"], latencies["sandboxed"]
        self.row("in-process server p50 / p99", f"{i50 * 1e6:8.0f} us / {i99 * 1e6:8.0f} us")
        self.row("this server p50 / p99", f"{s50 * 1e6:8.0f} us / {s99 * 1e6:8.0f} us")
        self.row("ratio at p50 (goal <= 1.3x) / p99", f"{s50 / i50:8.2f} x / {s99 / i99:.2f} x")
        connections, duration = self.args.connections, self.args.duration
        base = await self.throughput(baseline, baseline_pid)
        ours = await self.throughput(ws, server_pid, profile=bool(self.args.profile))
        print(f"\nthroughput, doubling actor, {connections} connections, {duration:g} s each")
        self.row("in-process server calls/s, errors", f"{base[0]:8.0f}, {base[1]} errors")
        self.row("this server calls/s, errors", f"{ours[0]:8.0f}, {ours[1]} errors")
        self.row("ratio of calls/s (goal >= 0.5x)", f"{ours[0] / base[0]:8.2f} x")
        self.row("CPU per call: in-process server",
                 f"{base[2] * 1e6:8.0f} us")  # fmt: skip
        self.row("CPU per call: this server's process / its sandboxes",
                 f"{ours[2] * 1e6:8.0f} us / {ours[3] * 1e6:.0f} us")  # fmt: skip
        self.row("  of it in the kernel: in-process server / this server's process",
                 f"{base[4] * 1e6:8.0f} us / {ours[4] * 1e6:.0f} us")  # fmt: skip
        self.row("server process busy (share of one core): in-process / this server",
                 f"{base[5] * 100:7.0f} % / {ours[5] * 100:.0f} %")  # fmt: skip

    async def state(self, ws: str, redis_url: str) -> None:
        calls = max(200, self.args.calls // 4)
        redis = aioredis.from_url(redis_url)
        try:
            await redis.set("bare:k", 0)

            async def get_set() -> None:
                value = int(await redis.get("bare:k") or 0)
                await redis.set("bare:k", value + 1)

            await timed(get_set, 50)
            bare = await timed(get_set, calls)
        finally:
            await redis.aclose()
        async with connect(ws, compression=None) as conn:
            await round_trips(conn, lambda i: request("bench_state", None, f"w{i}"), 50)
            rpc = await round_trips(conn, lambda i: request("bench_state", None, f"{i:08d}"), calls)
        b50, r50 = statistics.median(bare), statistics.median(rpc)
        print("\nstate: get_state + set_state in a call vs bare redis-py GET + SET")
        self.row("redis-py GET + SET p50", f"{b50 * 1e6:8.0f} us")
        self.row("process with get_state + set_state p50", f"{r50 * 1e6:8.0f} us")
        self.row("ratio at p50", f"{r50 / b50:8.1f} x")

    async def large_payload(self, ws: str) -> None:
        record = {"id": 0, "name": "sensor-reading", "values": [1.5, 2.25, 3.0], "ok": True}
        data = [dict(record, id=i) for i in range(int(1_000_000 / len(json.dumps(record))))]
        size = len(json.dumps(data))
        calls = 20
        compressor = zstandard.ZstdCompressor(level=3)
        print(f"\n{size / 1e6:.2f} MB payload echoed by an actor ({calls} calls, p50)")
        async with connect(ws, compression=None, max_size=None) as conn:
            plain = await round_trips(
                conn, lambda i: request("bench_echo", data, f"{i:08d}"), calls
            )
        async with connect(ws + "?compression=zstd", compression=None, max_size=None) as conn:
            frames = [compressor.compress(request("bench_echo", data, f"{i:08d}").encode())
                      for i in range(calls)]  # fmt: skip
            zstd = await round_trips(conn, lambda i: frames[i], calls)
        self.row("plain text frames: round trip / bytes sent",
                 f"{statistics.median(plain) * 1e3:8.1f} ms / {size:,} B")  # fmt: skip
        self.row("zstd frames: round trip / bytes sent",
                 f"{statistics.median(zstd) * 1e3:8.1f} ms / {len(frames[0]):,} B")  # fmt: skip

    async def run(self) -> None:
        with RedisServer() as redis_server:
            ws_port, http_port = self.start_server(redis_server.url)
            echo_port = self.start_echo()
            try:
                await self.wait_ready(http_port)
                ws = f"ws://127.0.0.1:{ws_port}/"
                print(f"reflow-microsandbox RPC benchmark ({os.cpu_count()} cores, "
                      f"{self.args.sandboxes} warm python sandboxes)")  # fmt: skip
                await self.latency(ws, echo_port)
                baseline_port = self.start_inprocess()
                await self.against_inprocess(ws, self.processes[0].pid, baseline_port)
                await self.state(ws, redis_server.url)
                await self.large_payload(ws)
            finally:
                self.stop_all()
        print("\n| measurement | figure |\n|---|---|")
        for name, value in self.rows:
            print(f"| {name} | {' '.join(value.split())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls for latency")
    parser.add_argument("--duration", type=float, default=10.0, help="throughput seconds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sandboxes", type=int, default=4, help="warm python sandboxes")
    parser.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the server "
                        "during its throughput run (needs py-spy on PATH)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpc-bench-") as workdir:
        asyncio.run(Bench(args, Path(workdir)).run())


if __name__ == "__main__":
    main()
