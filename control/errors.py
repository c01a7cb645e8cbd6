"""The one error hierarchy of the control plane, beneath everything.

Every failure the control plane raises on purpose is a :exc:`MicroSandboxError`, named
for what failed. The classes marked *here* are defined in this module; the others are
defined next to the one format or host part they describe, and derive from a family
here (``tests/unit/test_errors.py`` checks that this tree and the code agree):

* :exc:`MicroSandboxError` (here)
    * :exc:`CallError` (here): a call, a load or a sandbox start failed; carries its
      ``kind`` (:data:`~.vocabulary.ErrorKind`), ``message`` and ``details``
        * :exc:`SandboxError` (here): the sandbox, its runner or its backend failed or
          refused (``timeout``, ``memory``, ``crashed``, ``output_too_large``,
          ``script_error``, ``load_error``, ``unavailable``)
        * :exc:`StateError` (here): the state store failed (``state_error``) or refused
          a request the script got wrong (``script_error``)
        * :exc:`PoolError` (here): no sandbox could be had (``pool_exhausted``; or
          ``unavailable`` once the pool is shutting down)
    * :exc:`ConfigError` (here; also a ``ValueError``): the configuration is invalid
    * :exc:`RegistryError` (here; also a ``ValueError``): an actor cannot be found,
      loaded or registered
    * :exc:`MetadataError` (``actor_metadata``; also a ``ValueError``): a script is not
      a loadable actor
        * :exc:`NotAnActor`: it declares no actor at all
    * :exc:`StateValueError` (``state.codec``; also a ``ValueError``): a value cannot
      be stored
    * :exc:`StoredValueError` (``state.codec``; also a ``ValueError``): a stored value
      cannot be read
    * :exc:`ProtocolError` (here): bytes from a peer break the format they claim
        * :exc:`FrameError` (``sandbox.frames``): a runner's frame stream
            * :exc:`FrameTooLarge`
        * :exc:`DemuxError` (``sandbox.docker.attach``; also a ``ValueError``): the
          Docker engine's attach stream
        * :exc:`CompressionError` (``compression``; also a ``ValueError``): a zstd
          stream
            * :exc:`DecompressedTooLarge`
    * :exc:`HostError` (here): the host lacks what a backend needs
        * :exc:`CgroupsUnusable` (``sandbox.bubblewrap.cgroups``)
        * :exc:`DelegationError` (``sandbox.bubblewrap.cgroup_v2``; also a ``LookupError``)
    * :exc:`DeployError` (``functions.model``): a deploy that cannot be served
    * :exc:`DependencyError` (``functions.dependencies``; also a ``ValueError``)
    * :exc:`InstallError` (``functions.installer``)
    * :exc:`ConfigSourcesError` (``config_sources``): a file generated from the config
      model is missing or lacks its markers

How they reach a client: a :exc:`CallError` becomes the JSON-RPC server error of its
kind (``jsonrpc.SANDBOX_ERROR_CODES``, ``error.data.kind``); the methods turn the others
into a JSON-RPC error with a message (``RpcError`` in ``jsonrpc``, which is an answer,
not a failure, and so outside this tree). None reaches a transport as an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from .vocabulary import JSON, ErrorKind


class MicroSandboxError(Exception):
    """The root: every failure the control plane raises on purpose."""


class CallError(MicroSandboxError):
    """A call, load or sandbox start failed; ``kind`` says which limit or failure it was.

    ``message`` is for the client; ``details`` (JSON) go into ``error.data`` beside the
    kind (for a script's exception: its ``type``, ``message`` and ``traceback``).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        details: Mapping[str, JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.details: dict[str, JSON] = dict(details or {})

    @property
    def destroys_sandbox(self) -> bool:
        """Whether the sandbox the call ran in must be thrown away."""
        return self.kind not in ("script_error", "state_error", "pool_exhausted")


class SandboxError(CallError):
    """The sandbox, its runner or its backend failed or refused (see :data:`ErrorKind`)."""


StateErrorKind = Literal["state_error", "script_error"]


class StateError(CallError):
    """A state request failed: the store failed or refused it (``state_error``, the
    message names the store), or the script asked for something that cannot be stored
    (``script_error``: a key that is not a string, a value that is not strict JSON or is
    too large, incrementing a non-number)."""

    def __init__(
        self,
        message: str,
        *,
        kind: StateErrorKind = "state_error",
        details: Mapping[str, JSON] | None = None,
    ) -> None:
        super().__init__(kind, message, details=details)


PoolErrorKind = Literal["pool_exhausted", "unavailable"]


class PoolError(CallError):
    """No sandbox could be had: none freed up in time (``pool_exhausted``), or the pool
    is shutting down (``unavailable``)."""

    def __init__(
        self,
        kind: PoolErrorKind,
        message: str,
        *,
        details: Mapping[str, JSON] | None = None,
    ) -> None:
        super().__init__(kind, message, details=details)


class ConfigError(MicroSandboxError, ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


class RegistryError(MicroSandboxError, ValueError):
    """A user-facing reason why an actor cannot be found, loaded or registered."""


class ProtocolError(MicroSandboxError):
    """Bytes from a peer (a runner, the Docker engine, a client) break their format."""


class HostError(MicroSandboxError):
    """This host lacks what a backend needs; the message says what."""
