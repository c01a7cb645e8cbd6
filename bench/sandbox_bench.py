"""Sandbox runtime benchmark: prints a table of figures (not a test).

Run: ``.venv/bin/python bench/sandbox_bench.py [--quick]`` as root on the target host.

Rows are registered in :data:`ROWS` by :func:`row`; each is an async function
taking the shared :class:`Bench` and returning a :class:`Figure`. Other parts add
their own rows the same way (warm-pool acquire from the pool, Docker cold start
and warm call from the Docker backend) by importing this module and calling
``row(...)`` before :func:`main`, or by adding a function here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from null_handlers import NullHandlers  # bench/ is sys.path[0] when run

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.pool import SandboxPool
from reflow_microsandbox.sandbox.base import Backend, Sandbox
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from reflow_microsandbox.sandbox.bubblewrap.procfs import descendants, smaps_rollup
from reflow_microsandbox.vocabulary import ActorSource, CallContext, Language

TRIVIAL = {
    "python": "def process(context):\n    return {'ok': 1}\n",
    "nodejs": "function process(context) { return { ok: 1 }; }\n",
}


@dataclass
class Figure:
    """One measured quantity: samples and how to show them."""

    samples: list[float]
    unit: str  # "ms", "us" or "MB"
    goal: str = ""
    spread: str = "p95"  # which upper percentile to show beside p50
    note: str = ""

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Bench:
    """Shared state of one run: the backend and the yardstick figure."""

    backend: Backend
    rounds: int
    yardstick_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Row = Callable[[Bench], Awaitable[Figure]]
ROWS: list[tuple[str, Row]] = []


def row(name: str) -> Callable[[Row], Row]:
    """Register a benchmark row (rows print in registration order)."""

    def register(function: Row) -> Row:
        ROWS.append((name, function))
        return function

    return register


async def _loaded(backend: Backend, language: Language) -> Sandbox:
    sandbox = await backend.spawn(language)
    await sandbox.load(
        ActorSource(name="bench", namespace="bench", language=language, source=TRIVIAL[language])
    )
    return sandbox


@row("python3 -c pass (yardstick)")
async def yardstick(bench: Bench) -> Figure:
    samples = []
    for _ in range(bench.rounds):
        start = time.perf_counter()
        await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-c", "pass"], check=True)
        samples.append((time.perf_counter() - start) * 1000)
    bench.yardstick_ms = statistics.median(samples)
    return Figure(samples, "ms")


def _cold_start(language: Language, goal: str) -> Row:
    async def measure(bench: Bench) -> Figure:
        samples = []
        for _ in range(bench.rounds):
            start = time.perf_counter()
            sandbox = await bench.backend.spawn(language)
            samples.append((time.perf_counter() - start) * 1000)
            await sandbox.close()
        return Figure(samples, "ms", goal=goal)

    return measure


def _warm_call(language: Language) -> Row:
    async def measure(bench: Bench) -> Figure:
        sandbox = await _loaded(bench.backend, language)
        null = NullHandlers()
        context = CallContext(actor_id="bench", namespace="bench", payload={"x": 1})
        samples = []
        try:
            for index in range(bench.rounds * 50 + 100):
                start = time.perf_counter()
                await sandbox.call(context, null, null, timeout=5)
                if index >= 100:  # warm-up
                    samples.append((time.perf_counter() - start) * 1e6)
        finally:
            await sandbox.close()
        return Figure(samples, "us", goal="p50 < 500 us", spread="p99")

    return measure


def _idle_memory(language: Language, kind: str, goal: str) -> Row:
    async def measure(bench: Bench) -> Figure:
        samples = []
        for _ in range(max(3, bench.rounds // 5)):
            sandbox = await _loaded(bench.backend, language)
            await asyncio.sleep(0.2)
            pids = descendants(getattr(sandbox, "pids", [0])[0])
            total = sum(smaps_rollup(pid).get(kind, 0) for pid in pids)
            samples.append(total / 1e6)
            await sandbox.close()
        return Figure(samples, "MB", goal=goal, note="bwrap + runner, loaded and idle")

    return measure


@row("warm-pool acquire of a bound idle sandbox")
async def pool_acquire(bench: Bench) -> Figure:
    """Acquire + release of an actor's idle bound sandbox: the pool's own cost per call."""
    config = SandboxConfig()
    config.pool.python.min_instances = 1
    config.pool.nodejs.min_instances = 0
    backend = BubblewrapBackend(config)  # its own: pool.close() closes the backend too
    await backend.start()
    pool = SandboxPool(backend, config)
    await pool.start()
    await pool.wait_warmed(10)
    actor = ActorSource(name="acq", namespace="bench", language="python", source=TRIVIAL["python"])
    null = NullHandlers()
    await pool.execute(actor, CallContext(actor_id="acq", namespace="bench"), null, null)
    samples = []
    try:
        for _ in range(bench.rounds * 50):
            start = time.perf_counter()
            member = await pool._acquire(actor)  # the pool's hot path, without the call
            pool._release(member)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        await pool.close()
    return Figure(samples, "us", goal="p50 < 1 ms", spread="p99")


row("python sandbox cold start (spawn to ready)")(_cold_start("python", "p50 < 40 ms"))
row("node sandbox cold start (spawn to ready)")(_cold_start("nodejs", "p50 < 150 ms"))
row("python warm call through the runner pipe")(_warm_call("python"))
row("node warm call through the runner pipe")(_warm_call("nodejs"))
row("python idle sandbox RSS")(_idle_memory("python", "Rss", "< 20 MB"))
row("python idle sandbox PSS")(_idle_memory("python", "Pss", ""))
row("node idle sandbox RSS")(_idle_memory("nodejs", "Rss", "< 50 MB"))
row("node idle sandbox PSS")(_idle_memory("nodejs", "Pss", ""))


def _format(name: str, figure: Figure, yardstick_ms: float | None) -> str:
    p50 = figure.percentile(0.5)
    upper = figure.percentile(0.99 if figure.spread == "p99" else 0.95)
    ratio = ""
    if yardstick_ms and figure.unit == "ms":
        ratio = f"{p50 / yardstick_ms:6.2f}x"
    values = f"{p50:9.2f} {figure.unit:<3}{upper:9.2f} {figure.unit:<3}"
    note = f"  ({figure.note})" if figure.note else ""
    return f"{name:<46}{values} {figure.spread:<4}{ratio:>8}  {figure.goal}{note}"


async def run(rounds: int, docker: bool) -> None:
    backend = BubblewrapBackend(SandboxConfig())
    await backend.start()
    bench = Bench(backend=backend, rounds=rounds)
    cgroups = "cgroups " + ("on" if backend.cgroups is not None else "off")
    print(f"{'measurement':<46}{'p50':>9}    {'upper':>9}        {'vs pass':>8}  goal")
    try:
        for name, function in ROWS:
            figure = await function(bench)
            print(_format(name, figure, bench.yardstick_ms), flush=True)
    finally:
        await backend.close()
    print(f"({rounds} rounds; bubblewrap backend, default limits, {cgroups})")
    if docker:
        await _docker_rows(rounds)


async def _docker_rows(rounds: int) -> None:
    """The Docker backend's rows (bench/docker_bench.py), in the same run."""
    # bench/ is sys.path[0] when this file runs as a program
    import docker_bench  # type: ignore[import-not-found]

    print()
    try:
        rows = await docker_bench.measure(runs=rounds, calls=rounds * 25)
    except Exception as error:  # no engine, no image: say so instead of a traceback
        print(f"docker rows skipped: {error}")
        return
    docker_bench.print_rows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="samples per start-up row")
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker rows")
    args = parser.parse_args(argv)
    asyncio.run(run(10 if args.quick else args.rounds, docker=not args.no_docker))


if __name__ == "__main__":
    sys.exit(main())
