"""Load like Reflow's: actor-instance clients, open-loop arrivals, latency figures.

The clients behave as Reflow's script-actor client (``reflow-wire-protocol.md``): one
WebSocket connection per actor instance, no permessage-deflate and no pings, UUIDv4
string ids, text frames (binary ones ignored), Reflow's 30 s timeout per call, and a
lazy reconnect: a call made after the connection closed dials again first. A call
whose connection drops before its answer fails at once as ``connection``; only a
call that gets no answer at all within the 30 s counts as ``timeout``.

Arrivals are open-loop, as artillery's ``arrivalRate``: call ``i`` starts at
``start + i / rate`` whether or not earlier calls were answered, and its latency is
measured from that scheduled instant, so a server that stalls cannot hide its queue
from the figures (no coordinated omission). :class:`RateSearch` is the step search
for the highest rate that passes, without I/O; :func:`guide_arrival` is the
deployment guide's artillery scenario (a new connection per arrival sending its exact
frame).

Used by the reliability tests and by ``bench/load.py`` and ``bench/soak.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tests.deploy.reflow_client import process_request

CALL_TIMEOUT = 30.0
"""Reflow's per-call timeout in seconds (reflow-wire-protocol.md)."""

GUIDE_FRAME = '{"jsonrpc":"2.0","method":"process","params":{"actor_id":"test"},"id":1}'
"""The frame of the deployment guide's artillery scenario, verbatim."""

OK = "ok"
TIMEOUT = "timeout"  # no answer within CALL_TIMEOUT: a call lost silently
CONNECTION = "connection"  # refused, or closed before the answer: the client knows at once

Answer = tuple[str, str, dict[str, Any] | None]
"""What one call came to: (kind, detail, outputs). ``kind`` is ``ok``, the server's
``error.data.kind`` (or ``code <n>`` without one), ``timeout`` or ``connection``."""


def error_kind(error: Any) -> str:
    """The kind of a JSON-RPC error object: ``data.kind``, else ``code <n>``."""
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            return str(data["kind"])
        return f"code {error.get('code')}"
    return "result error"  # Reflow treats {"result": {"error": ...}} as a failure too


def answer_of(message: dict[str, Any]) -> Answer:
    """Read a response as Reflow does: any ``error`` (even inside ``result``) fails it."""
    result = message.get("result")
    if "error" in message:
        error = message["error"]
        detail = error.get("message", "") if isinstance(error, dict) else str(error)
        return error_kind(error), str(detail), None
    if isinstance(result, dict) and "error" in result:
        return error_kind(None), str(result["error"]), None
    outputs = result.get("outputs") if isinstance(result, dict) else None
    return OK, "", outputs if isinstance(outputs, dict) else {}


class ActorInstance:
    """One Reflow actor instance: its own connection to ``url``, calls of ``actor``
    (namespace ``default``), framed by :func:`tests.deploy.reflow_client.process_request`.

    ``instance`` is the instance's id, which names its state (``state.actor_id``);
    several calls may be in flight on the connection at once.
    """

    def __init__(
        self,
        url: str,
        actor: str,
        *,
        instance: str | None = None,
        timeout: float = CALL_TIMEOUT,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.actor = actor
        self.instance = instance or actor
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.dials = 0
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._dialling = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _ensure_connected(self) -> None:
        async with self._dialling:
            if self.connected:
                return
            self.dials += 1
            conn = await connect(
                self.url,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=self.connect_timeout,
                close_timeout=2,
            )
            self._conn = conn
            self._reader = asyncio.create_task(self._read(conn))

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for frame in conn:
                if isinstance(frame, bytes):
                    continue  # Reflow reads text frames only
                message = json.loads(frame)
                id_ = message.get("id") if isinstance(message, dict) else None
                if isinstance(id_, str):
                    waiter = self._pending.pop(id_, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            pending, self._pending = self._pending, {}
            for waiter in pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the connection closed"))

    async def call(self, payload: dict[str, Any] | None = None) -> Answer:
        """One ``process`` call; never raises for what the server or network does."""
        try:
            await self._ensure_connected()
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
            return CONNECTION, f"connect: {error or type(error).__name__}", None
        assert self._conn is not None
        call_id, frame = process_request(self.actor, payload or {}, instance=self.instance)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = waiter
        try:
            await self._conn.send(frame)
            message = await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            self._pending.pop(call_id, None)
            return TIMEOUT, f"no answer within {self.timeout:g} s", None
        except (ConnectionClosed, ConnectionError, OSError) as error:
            self._pending.pop(call_id, None)
            return CONNECTION, str(error) or type(error).__name__, None
        return answer_of(message)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def guide_arrival(url: str, *, timeout: float = CALL_TIMEOUT) -> Answer:
    """The guide's artillery scenario for one virtual user: connect, send
    :data:`GUIDE_FRAME`, read until the response with id 1, close. (artillery's ws
    engine sends without waiting; this waits for the answer to time it.)"""
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                url, compression=None, max_size=None, ping_interval=None, close_timeout=2
            ) as conn:
                await conn.send(GUIDE_FRAME)
                async for frame in conn:
                    if isinstance(frame, bytes):
                        continue
                    message = json.loads(frame)
                    if isinstance(message, dict) and message.get("id") == 1:
                        return answer_of(message)
                return CONNECTION, "closed before the answer", None
    except TimeoutError:
        return TIMEOUT, f"no answer within {timeout:g} s", None
    except (OSError, ConnectionClosed, InvalidHandshake) as error:
        return CONNECTION, str(error) or type(error).__name__, None


# -- open-loop arrivals and their figures ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call: what it came to, and seconds from its scheduled start to the answer."""

    index: int
    kind: str
    seconds: float
    detail: str = ""
    outputs: dict[str, Any] | None = None


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Summary:
    """The figures of one run: ``rate`` offered (calls/s), ``throughput`` answered
    successfully per second of the arrival window, latency percentiles of the
    successful calls in seconds, errors by kind, and ``lag``: how late the generator
    itself started its latest call (seconds; large means the client was the limit)."""

    rate: float
    window: float
    calls: int
    ok: int
    errors: dict[str, int]
    p50: float
    p99: float
    p999: float
    max: float
    lag: float

    @property
    def throughput(self) -> float:
        return self.ok / self.window if self.window > 0 else 0.0

    def passed(self, p99_bound: float) -> bool:
        """No error of any kind, and p99 within ``p99_bound`` seconds."""
        return not self.errors and self.ok > 0 and self.p99 <= p99_bound

    def line(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.rate:8.1f}/s offered  {self.throughput:8.1f}/s ok  calls {self.calls:6d}  "
            f"p50 {self.p50 * 1e3:7.2f} ms  p99 {self.p99 * 1e3:8.2f} ms  "
            f"p999 {self.p999 * 1e3:8.2f} ms  max {self.max * 1e3:8.2f} ms  "
            f"errors: {errors}  generator lag {self.lag * 1e3:.1f} ms"
        )


def summarize(outcomes: Sequence[Outcome], *, rate: float, window: float, lag: float) -> Summary:
    ok = sorted(o.seconds for o in outcomes if o.kind == OK)
    errors = Counter(o.kind for o in outcomes if o.kind != OK)
    return Summary(
        rate=rate,
        window=window,
        calls=len(outcomes),
        ok=len(ok),
        errors=dict(errors),
        p50=percentile(ok, 0.50),
        p99=percentile(ok, 0.99),
        p999=percentile(ok, 0.999),
        max=ok[-1] if ok else math.nan,
        lag=lag,
    )


@dataclass
class Run:
    """Every outcome of an open-loop run, in call order, and its summary."""

    outcomes: list[Outcome]
    summary: Summary
    started: float  # time.perf_counter() of the first scheduled call


Caller = Callable[[int], Awaitable[Answer]]
"""Makes call ``i`` and says what it came to."""


async def open_loop(
    rate: float,
    duration: float,
    call: Caller,
    *,
    stop: asyncio.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Run:
    """Start ``round(rate * duration)`` calls at a steady ``rate`` (calls/s), each at
    its scheduled instant however the earlier ones fare, and wait for all of them
    (each is bounded by its own timeout). ``stop`` ends the arrivals early."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    # perf_counter, not loop.time(): uvloop's clock has a millisecond resolution.
    clock = time.perf_counter
    count = max(1, round(rate * duration))
    start = clock() + 0.02
    lag = 0.0
    outcomes: list[Outcome | None] = [None] * count

    async def one(index: int, at: float) -> None:
        kind, detail, outputs = await call(index)
        outcome = Outcome(index, kind, clock() - at, detail, outputs)
        outcomes[index] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        if stop is not None and stop.is_set():
            break
        at = start + index / rate
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag = max(lag, -delay)
        tasks.append(asyncio.create_task(one(index, at)))
    await asyncio.gather(*tasks)
    done = [o for o in outcomes if o is not None]
    window = len(tasks) / rate
    return Run(done, summarize(done, rate=rate, window=window, lag=lag), start)


def round_robin(
    instances: Sequence[ActorInstance], payload: Callable[[int], dict[str, Any]]
) -> Caller:
    """Call ``i`` goes to instance ``i % len(instances)`` with ``payload(i)``."""

    async def call(index: int) -> Answer:
        return await instances[index % len(instances)].call(payload(index))

    return call


# -- the step search ---------------------------------------------------------------------------


@dataclass
class RateSearch:
    """The highest rate that passes, by steps: from ``start`` multiply by ``factor``
    until a step fails, then bisect between the best pass and the lowest failure until
    they are within ``precision`` (relative) of each other; at most ``max_steps``
    steps and never above ``ceiling``. Drive it with :meth:`next_rate` and
    :meth:`record`; it does no I/O."""

    start: float
    factor: float = 2.0
    precision: float = 0.1
    max_steps: int = 12
    ceiling: float = math.inf
    best: float | None = None
    failed: float | None = None
    steps: list[tuple[float, bool]] = field(default_factory=list)

    def next_rate(self) -> float | None:
        """The rate to try next, or None when the search is over."""
        if len(self.steps) >= self.max_steps:
            return None
        if self.failed is None:
            if self.best is None:
                return min(self.start, self.ceiling) if not self.steps else None
            if self.best >= self.ceiling:
                return None
            return min(self.best * self.factor, self.ceiling)
        low = self.best if self.best is not None else 0.0
        if self.failed - low <= self.precision * self.failed:
            return None
        if self.best is None and self.failed <= self.start / self.factor**3:
            return None  # nothing passes even far below the start: stop
        return (low + self.failed) / 2 if self.best is not None else self.failed / self.factor

    def record(self, rate: float, passed: bool) -> None:
        self.steps.append((rate, passed))
        if passed:
            self.best = rate if self.best is None else max(self.best, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)


async def closed_loop(
    instances: Sequence[ActorInstance],
    payload: Callable[[int], dict[str, Any]],
    stop: asyncio.Event,
    *,
    in_flight: int = 1,
) -> Counter[str]:
    """Flood: every instance keeps ``in_flight`` calls going back to back until
    ``stop``; returns how the calls ended, by kind."""
    kinds: Counter[str] = Counter()
    counter = iter(range(1 << 62))

    async def worker(instance: ActorInstance) -> None:
        while not stop.is_set():
            kind, _, _ = await instance.call(payload(next(counter)))
            kinds[kind] += 1

    await asyncio.gather(*(worker(i) for i in instances for _ in range(in_flight)))
    return kinds
