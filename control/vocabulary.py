"""The words every floor of the control plane shares, defined once.

Beneath everything (it imports nothing of the project): the transports, the dispatcher,
the methods, the pool, the state stores and the sandbox backends all speak of

- :data:`JSON`, a value that survives strict JSON, and the one strict-JSON encoder and
  decoder (:data:`STRICT_JSON_ENCODER`, :data:`STRICT_JSON_DECODER`);
- :data:`Language`, the runtimes an actor can be written for;
- :data:`ErrorKind`, how a call failed (carried by :class:`~.errors.CallError`);
- :class:`ActorSource` (a script to load) and :class:`CallContext` (what one call sees);
- :class:`StateHandler` and :class:`EventSink`, the two ways a running script reaches
  back out (state requests; outputs and logs), so that no floor below the methods knows
  of WebSockets or Redis.

The error hierarchy is in :mod:`.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

JSON: TypeAlias = Any
"""A value that survives strict JSON: ``None``, ``bool``, ``int``, finite ``float``,
``str``, and lists and string-keyed dicts of these (no NaN/Infinity)."""

Language = Literal["python", "nodejs"]
LANGUAGES: tuple[Language, ...] = ("python", "nodejs")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


STRICT_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
"""The one strict-JSON encoder: compact text, non-ASCII kept as is; ``encode`` raises
``ValueError`` on NaN/Infinity, ``TypeError`` on a value JSON has no form for, and
``RecursionError`` on nesting deeper than the interpreter's stack. Built once: building
an encoder per call (``json.dumps`` with options) costs more than encoding a small value."""

STRICT_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""The one strict-JSON decoder: ``NaN``/``Infinity``/``-Infinity`` raise ``ValueError``
(as any malformed text does, ``json.JSONDecodeError`` being a ``ValueError``)."""


def strict_json(value: JSON) -> str:
    """``value`` as compact strict-JSON text; raises as :data:`STRICT_JSON_ENCODER` does."""
    return STRICT_JSON_ENCODER.encode(value)


ErrorKind = Literal[
    "timeout",  # the call ran past its wall-clock limit
    "memory",  # the sandbox hit its memory limit
    "crashed",  # the runner died (signal, fork bomb, killed, protocol broken)
    "output_too_large",  # the call's outputs, pushes or logs went past the cap
    "script_error",  # the script raised, or returned something that is not strict JSON
    "load_error",  # the script could not be loaded (syntax error, no process function)
    "pool_exhausted",  # no sandbox could be had within the acquire timeout
    "state_error",  # the state store failed or refused a request
    "unavailable",  # the backend cannot start sandboxes (engine down, image missing)
]
"""How a call failed; sent to clients as ``error.data.kind`` (one JSON-RPC code each)."""


@dataclass(frozen=True)
class ActorSource:
    """A script to load: the actor's identity and its code."""

    name: str
    namespace: str
    language: Language
    source: str
    filename: str = "<actor>"
    package_dirs: tuple[str, ...] = ()
    """Host folders of this actor's own dependencies, mounted read-only into its
    sandboxes (on top of ``sandbox.package_dirs``); its sandboxes are started for it."""

    @property
    def key(self) -> str:
        """The identity the pool binds sandboxes to."""
        return f"{self.namespace}:{self.name}"


@dataclass(frozen=True)
class CallContext:
    """What a script sees as ``context`` (besides the methods)."""

    actor_id: str
    namespace: str
    payload: Mapping[str, JSON] = field(default_factory=dict)
    config: Mapping[str, JSON] = field(default_factory=dict)
    timestamp: int = 0


class StateHandler(Protocol):
    """Answers the state requests a running script makes (keys are the script's own).

    Raises :class:`~.errors.StateError` (or another :class:`~.errors.CallError`).
    """

    async def get(self, key: str, default: JSON = None) -> JSON: ...

    async def set(self, key: str, value: JSON) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def increment(self, key: str, by: int | float = 1) -> int | float: ...


class EventSink(Protocol):
    """Receives what a running script streams, in order, as it happens."""

    async def output(self, port: str, data: JSON) -> None: ...

    async def log(self, level: str, message: str) -> None: ...
