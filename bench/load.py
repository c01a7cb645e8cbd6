"""Load benchmark: prints figures (not a test; nothing here asserts a speed).

    .venv/bin/python bench/load.py [all|artillery|search|fairness] [options]

Runs a deployment of real parts (tests/reliability/deployment.py: templates/ rendered
by ansible/render.yml, one control plane behind a real nginx, Redis with AOF) and
drives it with Reflow-like clients (tests/reliability/loadgen.py), open-loop:

* ``artillery``: the deployment guide's scenario as written: a new connection per
  arrival sending ``{"jsonrpc":"2.0","method":"process","params":{"actor_id":"test"},
  "id":1}`` at ``--arrival-rate`` per second for ``--arrival-seconds``.
* ``search``: the highest steady rate one node sustains with zero errors and p99
  under ``--p99-ms``: steps of ``--step-seconds`` each, doubling from ``--start``
  until a step fails, then bisecting; at most ``--max-steps`` steps and
  ``--budget`` seconds. Calls go to the guide's actor ``test`` (a 10 kB push, a state
  counter in Redis) from ``--instances`` actor instances, one connection each.
* ``fairness``: the p99 of a quiet actor (``echo``, ``--quiet-rate`` calls/s) alone,
  then while one other actor floods the node, for three floods in turn: fast calls
  from 64 connections, calls that each run 2 s from 64 connections, and a storm of
  memory bombs, endless loops and output floods; printed with the ratio to the quiet
  value measured just before (goal <= 2x) and how the flooder's calls ended. The flood's
  clients run in a process of their own (so the quiet actor's timings are not the
  flood client's event loop), and each window prints where the CPU went: the control
  plane, all sandboxes (their parent cgroup), nginx and the two client processes, in
  % of one core.

The load generator shares the machine's cores with the node, nginx and Redis; its
``generator lag`` column says how late it started calls. Every figure line carries
the load average at the time it was taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.provisioning.conftest import AnsibleRunner  # noqa: E402
from tests.reliability.deployment import Deployment, Rendered  # noqa: E402
from tests.reliability.loadgen import (  # noqa: E402
    ActorInstance,
    RateSearch,
    Summary,
    closed_loop,
    guide_arrival,
    open_loop,
    round_robin,
)
from tests.reliability.observe import load_average  # noqa: E402
from tests.server.conftest import descendants  # noqa: E402

Rows = list[tuple[str, str]]


def figure(rows: Rows, name: str, value: str) -> None:
    line = f"{value}  [load average {load_average()}]"
    rows.append((name, line))
    print(f"  {name:<44} {line}", flush=True)


def brief(summary: Summary) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items())) or "0 errors"
    return (
        f"{summary.throughput:7.1f} calls/s, p50 {summary.p50 * 1e3:.1f} ms, "
        f"p99 {summary.p99 * 1e3:.1f} ms, p999 {summary.p999 * 1e3:.1f} ms, {errors}"
    )


async def artillery(deployment: Deployment, args: argparse.Namespace, rows: Rows) -> None:
    print(f"\nthe guide's artillery scenario: {args.arrival_rate}/s for {args.arrival_seconds} s")
    url = deployment.url()
    run = await open_loop(args.arrival_rate, args.arrival_seconds, lambda _: guide_arrival(url))
    figure(rows, "artillery scenario (new connection per call)", brief(run.summary))


async def search(deployment: Deployment, args: argparse.Namespace, rows: Rows) -> float | None:
    bound = args.p99_ms / 1e3
    print(
        f"\nstep search: actor test, {args.instances} instances, {args.step_seconds:g} s steps, "
        f"pass = 0 errors and p99 <= {args.p99_ms:g} ms"
    )
    instances = [
        ActorInstance(deployment.url(), "test", instance=f"test-{i}")
        for i in range(args.instances)
    ]
    calls = round_robin(instances, lambda i: {"input": i})
    started = time.monotonic()
    try:
        await open_loop(min(args.start, 50), 3, calls)  # warm: sandboxes bound, connections open
        rate_search = RateSearch(start=args.start, factor=2.0, precision=0.1,
                                 max_steps=args.max_steps)  # fmt: skip
        best: Summary | None = None
        while (rate := rate_search.next_rate()) is not None:
            if time.monotonic() - started + args.step_seconds > args.budget:
                print("  (time budget reached)")
                break
            run = await open_loop(rate, args.step_seconds, calls)
            passed = run.summary.passed(bound)
            rate_search.record(rate, passed)
            print(f"  {'pass' if passed else 'FAIL'} {run.summary.line()}  "
                  f"[load average {load_average()}]", flush=True)  # fmt: skip
            if passed and (best is None or rate > best.rate):
                best = run.summary
            await asyncio.sleep(2)  # let queues drain between steps
    finally:
        for instance in instances:
            await instance.close()
    if best is None:
        figure(rows, "sustained rate", "no step passed")
        return None
    figure(rows, f"sustained rate (p99 <= {args.p99_ms:g} ms, 0 errors)", brief(best))
    if rate_search.failed is not None:
        figure(rows, "first failing step", f"{rate_search.failed:.0f} calls/s offered")
    return best.rate


FLOODS: dict[str, tuple[str, Callable[[int], dict[str, Any]], int]] = {
    # name: (actor, payload, calls in flight per connection)
    "fast calls, 64 connections": ("flood", lambda n: {"n": n}, 2),
    "2 s calls, 64 connections": ("slow", lambda n: {"seconds": 2}, 2),
    "storm (memory, loops, output)": (
        "abuser",
        lambda n: {"how": ("memory", "loop", "flood")[n % 3]},
        1,
    ),
    # Each kind of the storm alone (``--floods memory loop output``).
    "memory bombs": ("abuser", lambda n: {"how": "memory"}, 1),
    "endless loops": ("abuser", lambda n: {"how": "loop"}, 1),
    "output floods": ("abuser", lambda n: {"how": "flood"}, 1),
}
DEFAULT_FLOODS = list(FLOODS)[:3]
FLOOD_NAMES = {"fast": "fast calls, 64 connections", "slow": "2 s calls, 64 connections",
               "storm": "storm (memory, loops, output)", "memory": "memory bombs",
               "loop": "endless loops", "output": "output floods"}  # fmt: skip


def _flood_child(url: str, name: str, seconds: float, pipe: Any) -> None:
    """In a process of its own: flood ``name`` (a key of FLOODS) for ``seconds``, then
    send back how the calls ended (a dict of counts by kind)."""

    async def flood() -> dict[str, int]:
        actor, payload, in_flight = FLOODS[name]
        connections = 16 if actor == "abuser" else 64
        clients = [ActorInstance(url, actor, instance=f"{actor}-{i}") for i in range(connections)]
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        kinds = await closed_loop(clients, payload, stop, in_flight=in_flight)
        for client in clients:
            await client.close()
        return dict(kinds)

    pipe.send(asyncio.run(flood()))


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def _sandboxes_cpu_ticks(node_pid: int) -> dict[int, int]:
    """CPU ticks so far of each live process below the node (its sandboxes). A sandbox
    that dies within a window takes its time with it: a lower bound (the v1 hosts here
    mount ``cpuacct`` apart from ``cpu``, so the sandboxes' cgroups do not count it)."""
    return {pid: _cpu_ticks(pid) for pid in descendants(node_pid)}


class CpuShares:
    """CPU time of the parts of a run between :meth:`start` and :meth:`line`."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, deployment: Deployment, flood_pid: int) -> None:
        node = deployment.nodes["a"].process
        balancer = deployment.balancer.process if deployment.balancer else None
        self.node_pid = node.pid if node else 0
        nginx = {balancer.pid} | descendants(balancer.pid) if balancer else set()
        self.groups = {
            "control plane": {self.node_pid},
            "nginx": nginx,
            "flood client": {flood_pid},
            "quiet client": {os.getpid()},
        }
        self.started = 0.0
        self.before: dict[str, float] = {}
        self.sandboxes_before: dict[int, int] = {}

    def _sample(self) -> dict[str, float]:
        seconds = {
            name: sum(_cpu_ticks(pid) for pid in pids) / self.TICK
            for name, pids in self.groups.items()
        }
        return seconds

    def start(self) -> None:
        self.started, self.before = time.monotonic(), self._sample()
        self.sandboxes_before = _sandboxes_cpu_ticks(self.node_pid)

    def line(self) -> str:
        window = time.monotonic() - self.started
        after = self._sample()
        ticks = _sandboxes_cpu_ticks(self.node_pid)
        used = sum(n - self.sandboxes_before.get(pid, 0) for pid, n in ticks.items())
        self.before["sandboxes"], after["sandboxes"] = 0.0, used / self.TICK
        parts = [
            f"{name} {100 * (after[name] - self.before[name]) / window:.0f}%"
            for name in ("control plane", "sandboxes", "nginx", "flood client", "quiet client")
        ]
        return "CPU (% of one core): " + ", ".join(parts)


async def fairness(deployment: Deployment, args: argparse.Namespace, rows: Rows) -> None:
    seconds, rate = args.fair_seconds, args.quiet_rate
    print(
        f"\nfairness: quiet actor echo at {rate:g} calls/s; each flood measured against the "
        f"quiet actor alone just before it, {seconds:g} s each; the flood from another process"
    )
    node = deployment.nodes["a"].process
    print(f"  (control plane pid {node.pid if node else '?'})", flush=True)
    quiet = [ActorInstance(deployment.url(), "echo", instance=f"quiet-{i}") for i in range(4)]
    calls = round_robin(quiet, lambda i: {"data": i})
    spawn = multiprocessing.get_context("spawn")
    try:
        await open_loop(rate, 2, calls)  # warm
        names = [FLOOD_NAMES[n] for n in args.floods] if args.floods else DEFAULT_FLOODS
        for name in names:
            alone = (await open_loop(rate, seconds, calls)).summary
            figure(rows, f"quiet actor alone (before {name})", brief(alone))
            receiver, sender = spawn.Pipe(duplex=False)
            child = spawn.Process(
                target=_flood_child, args=(deployment.url(), name, seconds + 3, sender)
            )
            child.start()
            sender.close()
            await asyncio.sleep(2)  # the flood is on (the child imports, connects, floods)
            cpu = CpuShares(deployment, child.pid or 0)
            cpu.start()
            during = (await open_loop(rate, seconds, calls)).summary
            usage = cpu.line()
            has_result = await asyncio.to_thread(receiver.poll, 120)
            kinds: dict[str, int] = receiver.recv() if has_result else {"no result": 1}
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()
            ratio = during.p99 / alone.p99 if alone.p99 else float("nan")
            ended = ", ".join(f"{k} {v}" for k, v in Counter(kinds).most_common())
            verdict = f"p99 {ratio:.1f}x alone (goal <= 2x); flooder: {ended}"
            figure(rows, f"quiet actor during {name}", f"{brief(during)}; {verdict}")
            print(f"    {usage}", flush=True)
            await asyncio.sleep(3)  # the node settles (sandboxes replaced, queues drained)
    finally:
        for client in quiet:
            await client.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="load-bench-") as work:
        workdir = Path(work)
        rendered = Rendered(workdir / "config", nodes=("a",))
        await asyncio.to_thread(rendered.render, AnsibleRunner(home=workdir / "ansible-home"))
        changes: dict[str, Any] = {"logging": {"level": "warning"}}
        if args.backend != "bubblewrap":
            changes["sandbox"] = {"backend": args.backend}
        pool: dict[str, Any] = {}
        if args.max_per_actor is not None:
            pool["max_per_actor"] = args.max_per_actor
        if args.rate_per_actor is not None:
            pool["max_calls_per_second_per_actor"] = args.rate_per_actor
        if args.crash_loop_threshold is not None:
            pool["crash_loop_threshold"] = args.crash_loop_threshold
        if pool:
            changes.setdefault("sandbox", {})["pool"] = pool
        if args.log_chars_per_actor is not None:
            changes.setdefault("sandbox", {})["max_log_chars_per_second_per_actor"] = (
                args.log_chars_per_actor
            )
        if args.cpu_limit_per_actor:
            changes.setdefault("sandbox", {})["cpu_limit_per_actor"] = True
        deployment = Deployment(rendered, workdir / "deployment", changes=changes)
        rows: Rows = []
        print(f"reflow-microsandbox load benchmark ({os.cpu_count()} cores, one node behind "
              f"nginx, {args.backend} sandboxes, Redis with AOF)")  # fmt: skip
        try:
            await deployment.start()
            if args.what in ("all", "artillery"):
                await artillery(deployment, args, rows)
            if args.what in ("all", "search"):
                await search(deployment, args, rows)
            if args.what in ("all", "fairness"):
                await fairness(deployment, args, rows)
        finally:
            await asyncio.to_thread(deployment.stop)
    print("\n| measurement | figure |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "artillery", "search", "fairness"])  # fmt: skip
    parser.add_argument("--backend", default="bubblewrap", choices=["bubblewrap", "docker"])
    parser.add_argument("--arrival-rate", type=float, default=10, help="artillery arrivals/s")
    parser.add_argument("--arrival-seconds", type=float, default=60, help="as in the guide")
    parser.add_argument("--instances", type=int, default=32, help="actor instances (search)")
    parser.add_argument("--start", type=float, default=100, help="first step, calls/s")
    parser.add_argument("--step-seconds", type=float, default=15)
    parser.add_argument("--p99-ms", type=float, default=100)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=300, help="seconds for the search")
    parser.add_argument("--fair-seconds", type=float, default=10, help="seconds per phase")
    parser.add_argument("--quiet-rate", type=float, default=50, help="quiet actor calls/s")
    parser.add_argument("--max-per-actor", type=int, default=None,
                        help="sandbox.pool.max_per_actor (default: as rendered)")  # fmt: skip
    parser.add_argument("--rate-per-actor", type=float, default=None,
                        help="sandbox.pool.max_calls_per_second_per_actor")  # fmt: skip
    parser.add_argument("--cpu-limit-per-actor", action="store_true",
                        help="sandbox.cpu_limit_per_actor: true")  # fmt: skip
    parser.add_argument("--crash-loop-threshold", type=int, default=None,
                        help="sandbox.pool.crash_loop_threshold (0: off)")  # fmt: skip
    parser.add_argument("--log-chars-per-actor", type=int, default=None,
                        help="sandbox.max_log_chars_per_second_per_actor (0: off)")  # fmt: skip
    parser.add_argument("--floods", nargs="+", choices=sorted(FLOOD_NAMES), default=None,
                        help="which floods, in order (default: fast slow storm)")  # fmt: skip
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main(arguments))
