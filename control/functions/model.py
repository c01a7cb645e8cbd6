"""The shapes of Reflow's deploy-then-call API, and of a function as the store keeps it (sans-I/O).

Field names, types and which ones are required come from Reflow's client
(``reflow-dynasb-api.md``): the deploy body it sends (:class:`DeployRequest`), the
deploy answer it parses (:func:`deploy_succeeded`, :func:`deploy_failed`: a failure is
the same JSON shape with ``success: false``), and the status it polls (camelCase,
every field required: :meth:`FunctionRecord.status`).

Two records live in the state store: the *code* of a function, stored once under the
SHA-256 of its runtime, source and dependencies (:class:`FunctionCode`: the same
script deployed by every actor instance of a graph is kept, checked and installed
once), and one small *deployment* per deploy (:class:`FunctionRecord`), which carries
the id Reflow calls, the name it gave, the timeout and the invocation count.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, replace
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..errors import MicroSandboxError
from ..jsonlimits import MAX_MESSAGE_DEPTH, depth_message, nesting_exceeds
from ..vocabulary import JSON, Language

RUNTIMES: tuple[Language, ...] = ("python", "nodejs")
"""What Reflow sends as ``runtime`` (its ``"python"`` and ``"nodejs"``)."""

FunctionState = Literal["deploying", "ready", "failed"]
"""``deploying`` while dependencies install; Reflow reads ``ready`` as ready and gives
up on ``failed`` (anything it does not know counts as unhealthy)."""

FUNCTION_STATES: tuple[str, ...] = get_args(FunctionState)

FUNCTION_ID = re.compile(r"fn-[0-9a-f]{32}")
"""A deployment id: ``fn-`` and 128 random bits in hex (safe in URLs and store keys)."""

DIGEST = re.compile(r"[0-9a-f]{64}")

_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSIONS: dict[Language, str] = {"python": ".py", "nodejs": ".js"}


class DeployError(MicroSandboxError):
    """A deploy that cannot be served: the HTTP status, the ``error`` text, a metric label."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


class DeployRequest(BaseModel):
    """The body of ``POST /api/v1/functions`` as Reflow sends it.

    ``name``, ``runtime`` and ``code`` are required; ``handler`` defaults to the
    name, ``timeout_seconds`` to Reflow's own 300, ``dependencies`` (package →
    version, ``"*"`` for any) may be null. Unknown fields are ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: StrictStr = Field(min_length=1, max_length=256)
    runtime: StrictStr = Field(min_length=1, max_length=64)
    code: StrictStr
    handler: StrictStr | None = Field(None, max_length=256)
    timeout_seconds: StrictInt | None = Field(None, ge=1)
    dependencies: dict[str, StrictStr] | None = None


def parse_deploy(body: bytes) -> DeployRequest:
    """The deploy request in ``body``; :class:`DeployError` (400) naming each bad field,
    or the nesting limit (:data:`~..jsonlimits.MAX_MESSAGE_DEPTH`) for a body nested deeper."""
    if nesting_exceeds(body, MAX_MESSAGE_DEPTH):
        # Python's json recurses once per level: refuse before it exhausts the stack.
        raise DeployError(400, depth_message("the body", MAX_MESSAGE_DEPTH), "bad_request")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DeployError(400, f"the body is not JSON: {error}", "bad_request") from None
    if not isinstance(data, dict):
        raise DeployError(
            400,
            "the body must be a JSON object with name, runtime and code",
            "bad_request",
        )
    try:
        return DeployRequest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors()
        )
        raise DeployError(400, f"invalid deploy request: {problems}", "bad_request") from None


def check_runtime(runtime: str) -> Language:
    """The runtime as a language; :class:`DeployError` (422) for anything else."""
    for known in RUNTIMES:
        if runtime == known:
            return known
    allowed = ", ".join(RUNTIMES)
    raise DeployError(422, f"unknown runtime {runtime!r} (allowed: {allowed})", "bad_runtime")


def script_filename(name: str, language: Language) -> str:
    """The file name tracebacks and syntax errors show for a function's script."""
    stem = _FILENAME_UNSAFE.sub("_", name).strip("._")[:64] or "function"
    return stem + _EXTENSIONS[language]


def new_function_id() -> str:
    return f"fn-{secrets.token_hex(16)}"


def _canonical(value: JSON) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class FunctionCode:
    """What runs: the language, the source and the normalised dependency list.

    ``dependencies`` holds ``(name, spec)`` pairs, sorted, as
    :func:`.dependencies.normalise` makes them.
    """

    runtime: Language
    code: str
    dependencies: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        """Canonical JSON: equal code gives equal bytes, hence an equal digest."""
        return _canonical(
            {
                "runtime": self.runtime,
                "code": self.code,
                "dependencies": [list(pair) for pair in self.dependencies],
            }
        )

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`to_bytes`, in hex: the key the code is stored under."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, digest: str) -> FunctionCode:
        """Read a stored record; ``ValueError`` when it is malformed or does not hash to
        ``digest`` (a record changed in the store is never run)."""
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"the stored code {digest[:12]} does not match its digest")
        raw = json.loads(data)
        runtime = raw["runtime"]
        if runtime not in RUNTIMES or not isinstance(raw["code"], str):
            raise ValueError(f"the stored code {digest[:12]} is malformed")
        pairs = tuple((str(name), str(spec)) for name, spec in raw["dependencies"])
        return cls(runtime, raw["code"], pairs)


@dataclass(frozen=True)
class FunctionRecord:
    """One deployment: what status reports and what a call needs to find the code."""

    id: str
    name: str
    runtime: Language
    handler: str
    digest: str
    timeout_seconds: int
    state: FunctionState = "ready"
    error: str = ""
    invocations: int = 0
    created_ms: int = 0

    def with_state(self, state: FunctionState, error: str = "") -> FunctionRecord:
        return replace(self, state=state, error=error)

    def status(self) -> dict[str, JSON]:
        """The status body Reflow parses (camelCase, every field present; ``vmId`` is
        empty: a function is not tied to one sandbox); ``error`` only when it failed."""
        body: dict[str, JSON] = {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "state": self.state,
            "vmId": "",
            "invocationCount": self.invocations,
        }
        if self.state == "failed":
            body["error"] = self.error
        return body

    def to_fields(self) -> dict[str, str]:
        """Flat string fields (a Redis hash, or SQLite columns)."""
        return {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "handler": self.handler,
            "digest": self.digest,
            "timeout_seconds": str(self.timeout_seconds),
            "state": self.state,
            "error": self.error,
            "invocations": str(self.invocations),
            "created_ms": str(self.created_ms),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> FunctionRecord:
        """Inverse of :meth:`to_fields`; ``ValueError`` (or ``KeyError``) when malformed."""
        runtime = fields["runtime"]
        state = fields["state"]
        if runtime not in RUNTIMES or state not in FUNCTION_STATES:
            raise ValueError(f"malformed function record {fields.get('id')!r}")
        language: Language = "python" if runtime == "python" else "nodejs"
        function_state: FunctionState = (
            "ready" if state == "ready" else "deploying" if state == "deploying" else "failed"
        )
        return cls(
            id=fields["id"],
            name=fields["name"],
            runtime=language,
            handler=fields["handler"],
            digest=fields["digest"],
            timeout_seconds=int(fields["timeout_seconds"]),
            state=function_state,
            error=fields.get("error", ""),
            invocations=int(fields.get("invocations", "0")),
            created_ms=int(fields.get("created_ms", "0")),
        )


def unknown_status(function_id: str) -> dict[str, JSON]:
    """The status of an id that is not deployed: a complete body (Reflow parses every
    field before it reads ``state``) whose ``removed`` makes it give up cleanly."""
    return {
        "id": function_id,
        "name": "",
        "runtime": "",
        "state": "removed",
        "vmId": "",
        "invocationCount": 0,
        "error": f"function {function_id} is not deployed",
    }


def deploy_succeeded(function_id: str, elapsed_ms: int) -> dict[str, JSON]:
    """The deploy answer Reflow reads: ``success`` and ``function_id`` (required), the
    optional ``vm_id``/``endpoint`` (null), ``deployment_time_ms`` (logged), ``error``."""
    return {
        "success": True,
        "function_id": function_id,
        "vm_id": None,
        "endpoint": None,
        "deployment_time_ms": elapsed_ms,
        "error": None,
    }


def deploy_failed(message: str) -> dict[str, JSON]:
    """A refused deploy, in the same shape (Reflow parses the body before the status)."""
    return {
        "success": False,
        "function_id": None,
        "vm_id": None,
        "endpoint": None,
        "deployment_time_ms": None,
        "error": message,
    }
