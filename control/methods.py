"""The API surface: ``process``, ``load``, ``list`` and ``unload``, as Reflow calls them.

Each method is an async function of validated params and a :class:`CallScope` (what
the transport offers the call: a push channel on WebSocket, none over HTTP). The
methods know nothing of frames or sockets; they tie the registry, the state store
and the pool together.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from .dispatch import Dispatcher
from .errors import CallError, RegistryError
from .jsonrpc import RpcError
from .logbudget import LogBudget
from .metrics import Metrics
from .pool import SandboxPool
from .registry import LANGUAGE_NAMES, ActorInfo, ActorRegistry, language_named
from .state.base import StateStore, StateTransaction
from .vocabulary import JSON, ActorSource, CallContext, EventSink, Language

ACTOR_NOT_FOUND = -32010

Push = Callable[[str, JSON], Awaitable[None]]
"""Sends one notification (method, params) to the caller, in order."""


class FunctionTarget(Protocol):
    """A connection bound to one deployed function (``<ws base>/<function_id>``)."""

    async def resolve(self) -> tuple[ActorSource, float]:
        """The function's code and its call time limit (seconds); ``RpcError`` when it
        cannot run. Called once per call, in arrival order."""
        ...


@dataclass(frozen=True, slots=True)
class CallScope:
    """What the transport offers a call: a push channel (or None to collect outputs),
    and the deployed function every ``process`` runs (or None: ``actor_id`` decides)."""

    push: Push | None = None
    function: FunctionTarget | None = None


# -- params -------------------------------------------------------------------------------


class _Params(BaseModel):
    # Clients send more than we read (Reflow's state.redis_url): extra keys are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)


class StateRef(_Params):
    """Where the actor's state lives; ``redis_url`` is ignored on purpose (we never
    connect to an address a client supplies)."""

    namespace: StrictStr | None = Field(None, min_length=1)
    actor_id: StrictStr | None = Field(None, min_length=1)


class ProcessParams(_Params):
    actor_id: StrictStr = Field(min_length=1)
    payload: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    state: StateRef | None = None
    timestamp: StrictInt | None = Field(None, ge=0)


class LoadParams(_Params):
    file_path: StrictStr | None = Field(None, min_length=1)
    source: StrictStr | None = None
    language: Language | None = None
    name: StrictStr | None = Field(None, min_length=1)
    namespace: StrictStr = Field("default", min_length=1)

    @field_validator("language", mode="before")
    @classmethod
    def _language_alias(cls, value: object) -> object:
        """``js``/``node``/``javascript``/``py``/``python3`` name the two languages too."""
        if value is None:
            return None
        language = language_named(value)
        if language is None:
            raise ValueError(f"unsupported language {value!r} (allowed: {LANGUAGE_NAMES})")
        return language


class ListParams(_Params):
    pass


class UnloadParams(_Params):
    actor_id: StrictStr | None = Field(None, min_length=1)
    name: StrictStr | None = Field(None, min_length=1)
    namespace: StrictStr | None = Field(None, min_length=1)


# -- event sinks ---------------------------------------------------------------------------


class _LogGate:
    """One call's share of its actor's :class:`~.logbudget.LogBudget`: says which log
    lines pass, counts the dropped ones, and gives the one warning line per call."""

    __slots__ = ("_budget", "_key", "_metrics", "warned")

    def __init__(self, budget: LogBudget, key: str, metrics: Metrics) -> None:
        self._budget = budget
        self._key = key
        self._metrics = metrics
        self.warned = False

    def passes(self, message: str) -> bool:
        if self._budget.take(self._key, len(message), time.monotonic()):
            return True
        self._metrics.log_characters_dropped(len(message))
        return False

    def warning(self) -> str:
        self.warned = True
        return (
            f"log output over this actor's budget of {self._budget.rate:g} characters/s "
            "(sandbox.max_log_chars_per_second_per_actor): lines of this call are dropped "
            "while it lasts"
        )


class _PushSink:
    """Streams outputs and logs to the caller as ``output`` / ``log`` notifications;
    log lines only within the actor's budget (``gate``; None: all)."""

    __slots__ = ("_actor_id", "_gate", "_push")

    def __init__(self, actor_id: str, push: Push, gate: _LogGate | None = None) -> None:
        self._actor_id = actor_id
        self._push = push
        self._gate = gate

    async def output(self, port: str, data: JSON) -> None:
        await self._push(
            "output",
            {
                "actor_id": self._actor_id,
                "port": port,
                "data": data,
                "timestamp": int(time.time() * 1000),
            },
        )

    async def log(self, level: str, message: str) -> None:
        gate = self._gate
        if gate is not None and not gate.passes(message):
            if not gate.warned:
                await self._push("log", f"[{self._actor_id}] warn: {gate.warning()}")
            return
        await self._push("log", f"[{self._actor_id}] {level}: {message}")


class _CollectSink:
    """Gathers pushed outputs for transports without push (HTTP): last value per port."""

    __slots__ = ("outputs",)

    def __init__(self) -> None:
        self.outputs: dict[str, JSON] = {}

    async def output(self, port: str, data: JSON) -> None:
        self.outputs[port] = data

    async def log(self, level: str, message: str) -> None:
        pass


class _CountedState:
    """Passes state requests to the transaction and counts them for the metrics."""

    __slots__ = ("_metrics", "_tx")

    def __init__(self, tx: StateTransaction, metrics: Metrics) -> None:
        self._tx = tx
        self._metrics = metrics

    def _count_error(self, error: CallError) -> None:
        if error.kind == "state_error":
            self._metrics.state_error()

    async def get(self, key: str, default: JSON = None) -> JSON:
        self._metrics.state_operation("get")
        try:
            return await self._tx.get(key, default)
        except CallError as error:
            self._count_error(error)
            raise

    async def set(self, key: str, value: JSON) -> None:
        self._metrics.state_operation("set")
        try:
            await self._tx.set(key, value)
        except CallError as error:
            self._count_error(error)
            raise

    async def delete(self, key: str) -> None:
        self._metrics.state_operation("delete")
        try:
            await self._tx.delete(key)
        except CallError as error:
            self._count_error(error)
            raise

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        self._metrics.state_operation("increment")
        try:
            return await self._tx.increment(key, by)
        except CallError as error:
            self._count_error(error)
            raise


# -- the methods ---------------------------------------------------------------------------


class Api:
    """The methods, bound to one server's registry, store, pool and metrics."""

    def __init__(
        self,
        registry: ActorRegistry,
        store: StateStore,
        pool: SandboxPool,
        metrics: Metrics,
        log_budget: LogBudget | None = None,
    ) -> None:
        """``log_budget``: log text relayed per actor (None: all of it)."""
        self._registry = registry
        self._store = store
        self._pool = pool
        self._metrics = metrics
        self._log_budget = log_budget

    def register(self, dispatcher: Dispatcher[CallScope]) -> None:
        dispatcher.register("process", ProcessParams, self.process)
        dispatcher.register("load", LoadParams, self.load)
        dispatcher.register("list", ListParams, self.list)
        dispatcher.register("unload", UnloadParams, self.unload)

    def _resolve(self, actor_id: str, namespace: str | None) -> ActorInfo:
        # Reflow derives the namespace from its own folder layout, which may differ
        # from ours: the registry falls back to a name that is unique here.
        try:
            return self._registry.resolve(actor_id, namespace)
        except RegistryError as error:
            raise RpcError(
                ACTOR_NOT_FOUND, str(error), {"kind": "not_found", "actor_id": actor_id}
            ) from None

    async def process(self, params: ProcessParams, scope: CallScope) -> JSON:
        """Run the actor once; outputs pushed on WebSocket, collected over HTTP.

        Nothing is awaited before ``pool.execute`` queues the call: transports start
        one task per frame in arrival order, so calls of one actor reach the pool's
        FIFO queue in the order they were sent. On a function connection
        (``scope.function``) every call runs that function whatever ``actor_id`` says,
        within the function's own time limit; its lookup keeps the order itself.
        """
        state_ref = params.state
        limit: float | None = None
        if scope.function is not None:
            # Nothing else is awaited before the pool: resolve() keeps arrival order.
            source, limit = await scope.function.resolve()
        else:
            source = self._resolve(
                params.actor_id, state_ref.namespace if state_ref else None
            ).source
        namespace = (state_ref.namespace if state_ref else None) or source.namespace
        state_actor = (state_ref.actor_id if state_ref else None) or params.actor_id
        context = CallContext(
            actor_id=params.actor_id,
            namespace=namespace,
            payload=params.payload or {},
            config=params.config or {},
            timestamp=params.timestamp or 0,
        )
        collect: _CollectSink | None = None
        sink: EventSink
        if scope.push is None:
            sink = collect = _CollectSink()
        else:
            budget = self._log_budget
            gate = None if budget is None else _LogGate(budget, source.key, self._metrics)
            sink = _PushSink(params.actor_id, scope.push, gate)
        tx = self._store.transaction(namespace, state_actor)
        started = time.perf_counter()
        try:
            outputs = await self._pool.execute(
                source, context, _CountedState(tx, self._metrics), sink, timeout=limit
            )
            if tx.touched:
                self._metrics.state_operation("commit")
            try:
                await tx.commit()
            except CallError:
                self._metrics.state_error()
                raise
        except CallError as error:
            await self._abort(tx)
            self._metrics.execution_finished(
                source.language, error.kind, time.perf_counter() - started
            )
            raise
        except BaseException:
            await self._abort(tx)
            self._metrics.execution_finished(
                source.language, "error", time.perf_counter() - started
            )
            raise
        self._metrics.execution_finished(source.language, "ok", time.perf_counter() - started)
        if collect is not None and collect.outputs:
            merged = dict(collect.outputs)
            merged.update(outputs)
            outputs = merged
        return {"outputs": outputs}

    async def _abort(self, tx: StateTransaction) -> None:
        try:
            await tx.abort()
        except CallError:
            self._metrics.state_error()

    async def load(self, params: LoadParams, scope: CallScope) -> JSON:
        """Load a script from a configured folder, or inline when allowed (Reflow's shape)."""
        try:
            if params.file_path is not None:
                info = self._registry.load_file(params.file_path)
            elif params.source is not None:
                if params.language is None or params.name is None:
                    return _failed("an inline script needs source, language and name")
                info = self._registry.load_inline(
                    params.source, params.language, params.name, params.namespace
                )
            else:
                return _failed("load needs file_path, or source with language and name")
        except RegistryError as error:
            return _failed(str(error))
        return {"success": True, "actor": info.source.name, "namespace": info.source.namespace}

    async def list(self, params: ListParams, scope: CallScope) -> JSON:
        """The actors, and (``problems``) every script refused at discovery, with why."""
        result: dict[str, JSON] = {"actors": self._registry.names()}
        if self._registry.problems:
            result["problems"] = list(self._registry.problems)
        return result

    async def unload(self, params: UnloadParams, scope: CallScope) -> JSON:
        """Forget an actor and throw away its sandboxes."""
        name = params.actor_id or params.name
        if name is None:
            return _failed("unload needs actor_id")
        try:
            key = self._registry.resolve(name, params.namespace).source.key
            removed = self._registry.unload(name, params.namespace)
        except RegistryError as error:
            return _failed(str(error))
        await self._pool.unload(key)
        return {"success": removed}


def _failed(message: str) -> JSON:
    # Reflow's bridges answer load failures this way; Reflow itself never calls load.
    return {"success": False, "error": message}
