"""Docker sandbox figures: cold start, first call from the warm pool, warm calls, idle memory.

Beside each Docker figure stands a bare ``docker run --rm --network none IMAGE true`` (what
running every call in a fresh container costs at the very least). The sandbox benchmark
(bench/sandbox_bench.py) can call :func:`measure` and print its rows next to bubblewrap's;
run alone it prints its own table:

    .venv/bin/python bench/docker_bench.py [--runs 20] [--calls 500]

Goal: the warm-pool path (a pre-started container whose runner is ready) makes a Docker
sandbox's first call at least 20x faster than ``docker run`` per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from dataclasses import dataclass

from null_handlers import NullHandlers  # bench/ is sys.path[0] when run

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.sandbox.docker.backend import DockerBackend
from reflow_microsandbox.vocabulary import ActorSource, CallContext, Language

ACTORS: dict[Language, str] = {
    "python": "def process(context):\n    return {'echo': context.get_input('n')}\n",
    "nodejs": (
        "async function process(context) { return { echo: context.getInput('n') }; }\n"
        "module.exports = { process };\n"
    ),
}


@dataclass
class Row:
    """One line of the table: a name, the figures in ms (or MiB), and a note."""

    name: str
    figures: dict[str, float]
    note: str = ""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 0.5) * 1000,
        "p95_ms": percentile(values, 0.95) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
    }


def _docker_run_true(image: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "true"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.perf_counter() - started


async def bare_docker_run(image: str, runs: int) -> list[float]:
    """Seconds per ``docker run --rm --network none IMAGE true``."""
    return [await asyncio.to_thread(_docker_run_true, image) for _ in range(runs)]


async def cold_starts(backend: DockerBackend, language: Language, runs: int) -> list[float]:
    """Seconds from spawn() to a ready runner in a new container (closed afterwards)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        sandbox = await backend.spawn(language)
        times.append(time.perf_counter() - started)
        await sandbox.close()
    return times


async def first_calls(backend: DockerBackend, language: Language, runs: int) -> list[float]:
    """Seconds for load + first call on a pre-started (warm) sandbox: the pool's path."""
    times = []
    for index in range(runs):
        sandbox = await backend.spawn(language)
        started = time.perf_counter()
        await sandbox.load(ActorSource("bench", "bench", language, ACTORS[language]))
        await sandbox.call(
            CallContext("bench", "bench", {"n": index}), NullHandlers(), NullHandlers(), timeout=10
        )
        times.append(time.perf_counter() - started)
        await sandbox.close()
    return times


async def warm_calls(backend: DockerBackend, language: Language, calls: int) -> list[float]:
    """Seconds per call through one loaded container's runner."""
    sandbox = await backend.spawn(language)
    try:
        await sandbox.load(ActorSource("bench", "bench", language, ACTORS[language]))
        context = CallContext("bench", "bench", {"n": 1})
        for _ in range(20):
            await sandbox.call(context, NullHandlers(), NullHandlers(), timeout=10)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await sandbox.call(context, NullHandlers(), NullHandlers(), timeout=10)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await sandbox.close()


async def idle_memory(backend: DockerBackend, language: Language, count: int) -> list[int]:
    """Bytes each of ``count`` idle, ready containers uses (from its cgroup)."""
    sandboxes = [await backend.spawn(language) for _ in range(count)]
    try:
        await asyncio.sleep(0.5)
        return [usage for s in sandboxes if (usage := s.memory_usage()) is not None]
    finally:
        await asyncio.gather(*(s.close() for s in sandboxes))


async def measure(
    settings: SandboxConfig | None = None, *, runs: int = 20, calls: int = 500
) -> list[Row]:
    """Every Docker row of the sandbox benchmark, both languages."""
    settings = settings or SandboxConfig(backend="docker")
    backend = DockerBackend(settings)
    await backend.start()
    rows: list[Row] = []
    try:
        for language in ("python", "nodejs"):
            image = (
                settings.docker.python_image
                if language == "python"
                else (settings.docker.node_image)
            )
            bare = await bare_docker_run(image, runs)
            rows.append(Row(f"docker run --rm {language} image true", _ms(bare), "per call"))
            cold = await cold_starts(backend, language, runs)
            rows.append(Row(f"docker {language} cold start (spawn to ready)", _ms(cold)))
            first = await first_calls(backend, language, runs)
            speedup = statistics.median(bare) / statistics.median(first)
            rows.append(
                Row(
                    f"docker {language} first call, warm pool (load + call)",
                    _ms(first),
                    f"{speedup:.0f}x faster than docker run (goal >= 20x)",
                )
            )
            warm = await warm_calls(backend, language, calls)
            rows.append(Row(f"docker {language} warm call", _ms(warm)))
            memory = await idle_memory(backend, language, 5)
            if memory:
                mib = statistics.median(memory) / 2**20
                rows.append(Row(f"docker {language} idle memory per container", {"MiB": mib}))
    finally:
        await backend.close()
    return rows


def print_rows(rows: list[Row]) -> None:
    for row in rows:
        figures = "  ".join(f"{key}={value:.2f}" for key, value in row.figures.items())
        print(f"{row.name:<55} {figures}  {row.note}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="cold starts / docker runs")
    parser.add_argument("--calls", type=int, default=500, help="warm calls")
    args = parser.parse_args()
    print_rows(asyncio.run(measure(runs=args.runs, calls=args.calls)))


if __name__ == "__main__":
    main()
