"""Soak: a steady load for ten minutes, watching for leaks; prints figures and a verdict.

    .venv/bin/python bench/soak.py --rate R [--minutes 10] [--backend bubblewrap|docker]

Run it at half the rate ``bench/load.py search`` found sustainable. One control plane
behind a real nginx with Redis (tests/reliability/deployment.py), Reflow-like clients
(32 instances of the guide's ``test`` actor, every tenth call to the Node actor
``js_echo``), open-loop at ``--rate`` calls/s. Every ``--every`` seconds it samples,
from the host (``/proc``, cgroups, the Docker CLI): the control plane's RSS and open
descriptors, the node's sandbox cgroups (or containers), Redis's RSS; the pool's
memory (the node's own ``microsandbox_memory_usage_bytes``); and the calls of that
interval. At the end the node is stopped (SIGTERM) and nothing of it may remain.

Verdict (exit status 1 if any fails): no call failed; the control plane's RSS and the
memory per sandbox of each language are flat (the mean of the last two minutes within
10% + 10 MiB of the mean of the two minutes after the first); descriptors within 16
of that baseline; sandboxes never above the pool's ``max_instances``; after the stop
no sandbox process, cgroup or container of the node is left.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.provisioning.conftest import AnsibleRunner  # noqa: E402
from tests.reliability.deployment import Deployment, Rendered, metric_value  # noqa: E402
from tests.reliability.loadgen import (  # noqa: E402
    ActorInstance,
    Answer,
    Outcome,
    open_loop,
    summarize,
)
from tests.reliability.observe import (  # noqa: E402
    containers_of,
    load_average,
    parent_cgroups,
    rss_bytes,
    sample_node,
)
from tests.server.conftest import alive  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Sample:
    at: float  # seconds since the load started
    control_rss: int
    pool_memory: int  # microsandbox_memory_usage_bytes: every sandbox of the node
    per_sandbox: dict[str, float]  # language -> memory per live sandbox of it (bytes)
    fds: int
    sandboxes: int  # sandbox cgroups (bubblewrap) or containers (docker) on the host
    redis_rss: int
    calls: int
    errors: int
    p99: float
    load: str


def per_sandbox(metrics: str) -> dict[str, float]:
    """Memory per live sandbox of each language, from the node's metrics (the pool's
    size changes with the load; what must stay flat is what one sandbox holds)."""
    result = {}
    for language in ("python", "nodejs"):
        count = metric_value(metrics, "microsandbox_active_sandboxes", language=language)
        used = metric_value(metrics, "microsandbox_memory_usage_bytes", language=language)
        if count:
            result[language] = used / count
    return result


def flat(series: list[float], minutes: list[float]) -> tuple[float, float, bool]:
    """(baseline mean, final mean, flat?): minutes 1-3 against the last two."""
    end = minutes[-1] if minutes else 0.0
    base = [v for v, m in zip(series, minutes, strict=True) if 1 <= m < 3]
    last = [v for v, m in zip(series, minutes, strict=True) if m >= end - 2]
    if not base or not last:
        return math.nan, math.nan, False  # too short to tell
    before, after = statistics.mean(base), statistics.mean(last)
    return before, after, after <= before * 1.10 + 10 * MIB


async def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        workdir = Path(work)
        rendered = Rendered(workdir / "config", nodes=("a",))
        await asyncio.to_thread(rendered.render, AnsibleRunner(home=workdir / "ansible-home"))
        changes: dict[str, Any] = {"logging": {"level": "warning"}}
        if args.backend != "bubblewrap":
            changes["sandbox"] = {"backend": args.backend}
        deployment = Deployment(rendered, workdir / "deployment", changes=changes)
        await deployment.start()
        node = deployment.nodes["a"].process
        assert node is not None and deployment.redis is not None
        pid = node.pid
        pool = deployment.rendered.node_config["sandbox"]["pool"]
        most = pool["python"]["max_instances"] + pool["nodejs"]["max_instances"]
        url = deployment.url()
        instances = [ActorInstance(url, "test", instance=f"test-{i}") for i in range(32)]
        node_clients = [ActorInstance(url, "js_echo", instance=f"js-{i}") for i in range(4)]

        async def call(index: int) -> Answer:
            if index % 10 == 9:
                return await node_clients[index % 4].call({"data": index})
            return await instances[index % 32].call({"input": index})

        window: list[Outcome] = []
        samples: list[Sample] = []
        began = time.monotonic()
        done = asyncio.Event()
        print(
            f"soak: {args.rate:g} calls/s for {args.minutes:g} min, {args.backend} sandboxes, "
            f"one node behind nginx, Redis with AOF; a sample every {args.every:g} s"
        )
        print(f"{'t':>6} {'control':>9} {'pool':>9} {'fds':>5} {'boxes':>5} "
              f"{'redis':>8} {'calls':>6} {'err':>4} {'p99 ms':>8}  load")  # fmt: skip

        async def sampler() -> None:
            while not done.is_set():
                await asyncio.sleep(args.every)
                taken, window[:] = list(window), []
                node_sample = await asyncio.to_thread(
                    sample_node, pid, deployment.sandbox_pids("a")
                )
                if args.backend == "docker":
                    boxes = len(await asyncio.to_thread(containers_of, pid))
                else:
                    boxes = node_sample.cgroups
                metrics = await deployment.metrics("a")
                summary = summarize(taken, rate=args.rate, window=args.every, lag=0)
                sample = Sample(
                    at=time.monotonic() - began,
                    control_rss=node_sample.control_rss,
                    pool_memory=int(metric_value(metrics, "microsandbox_memory_usage_bytes")),
                    per_sandbox=per_sandbox(metrics),
                    fds=node_sample.fds,
                    sandboxes=boxes,
                    redis_rss=rss_bytes(deployment.redis.pid or 0),  # type: ignore[union-attr]
                    calls=summary.calls,
                    errors=sum(summary.errors.values()),
                    p99=summary.p99,
                    load=load_average(),
                )
                samples.append(sample)
                print(
                    f"{sample.at:6.0f} {sample.control_rss / MIB:8.1f}M "
                    f"{sample.pool_memory / MIB:8.1f}M {sample.fds:5d} {sample.sandboxes:5d} "
                    f"{sample.redis_rss / MIB:7.1f}M "
                    f"{sample.calls:6d} {sample.errors:4d} {sample.p99 * 1e3:8.1f}  {sample.load}",
                    flush=True,
                )

        watcher = asyncio.create_task(sampler())
        try:
            run = await open_loop(args.rate, args.minutes * 60, call, on_outcome=window.append)
        finally:
            done.set()
            await watcher
            for client in instances + node_clients:
                await client.close()
        sandbox_pids = deployment.sandbox_pids("a")
        node.terminate()
        code = await asyncio.to_thread(node.wait, 60)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in sandbox_pids) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        left_processes = [p for p in sandbox_pids if alive(p)]
        left_cgroups = parent_cgroups(pid)
        left_containers = containers_of(pid) if args.backend == "docker" else []
        await asyncio.to_thread(deployment.stop)

    print(f"\nall calls: {run.summary.line()}")
    minutes = [s.at / 60 for s in samples]
    checks: list[tuple[str, bool, str]] = [
        ("no call failed", not run.summary.errors, str(run.summary.errors or "none")),
    ]
    memory_series = [("control-plane RSS flat", [float(s.control_rss) for s in samples], minutes)]
    for language in ("python", "nodejs"):
        having = [s for s in samples if language in s.per_sandbox]
        memory_series.append((
            f"{language} memory per sandbox flat",
            [s.per_sandbox[language] for s in having],
            [s.at / 60 for s in having],
        ))  # fmt: skip
    for name, series, at in memory_series:
        before, after, ok = flat(series, at)
        checks.append((name, ok, f"{before / MIB:.1f} MiB (min 1-3) -> {after / MIB:.1f} MiB "
                                 "(last 2 min)"))  # fmt: skip
    fds_before, fds_after, _ = flat([float(s.fds) for s in samples], minutes)
    checks.append(("descriptors flat", fds_after <= fds_before + 16,
                   f"{fds_before:.0f} -> {fds_after:.0f}"))  # fmt: skip
    highest = max((s.sandboxes for s in samples), default=0)
    checks.append(("sandboxes within max_instances", highest <= most,
                   f"at most {highest} sandboxes for max {most}"))  # fmt: skip
    checks.append(("node stopped cleanly", code == 0, f"exit status {code}"))
    checks.append(("nothing left after the stop",
                   not (left_processes or left_cgroups or left_containers),
                   f"{len(left_processes)} processes, {len(left_cgroups)} cgroups, "
                   f"{len(left_containers)} containers"))  # fmt: skip
    print(f"\nverdict [load average {load_average()}]")
    for name, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print("\n| minute | control plane RSS | pool memory | per python / node sandbox | fds |"
          " sandboxes | Redis RSS | calls | errors | p99 | load average |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    per_minute = max(1, round(60 / args.every))
    for sample in samples[per_minute - 1 :: per_minute]:
        print(
            f"| {sample.at / 60:.0f} | {sample.control_rss / MIB:.1f} MiB | "
            f"{sample.pool_memory / MIB:.1f} MiB | "
            f"{sample.per_sandbox.get('python', 0) / MIB:.1f} / "
            f"{sample.per_sandbox.get('nodejs', 0) / MIB:.1f} MiB | "
            f"{sample.fds} | {sample.sandboxes} | "
            f"{sample.redis_rss / MIB:.1f} MiB | {sample.calls} | {sample.errors} | "
            f"{sample.p99 * 1e3:.1f} ms | {sample.load} |"
        )
    return 0 if all(ok for _, ok, _ in checks) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, required=True, help="calls/s (half the sustained)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--backend", default="bubblewrap", choices=["bubblewrap", "docker"])
    args = parser.parse_args()
    try:
        import uvloop

        code = uvloop.run(soak(args))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        code = asyncio.run(soak(args))
    sys.exit(code)


if __name__ == "__main__":
    main()
