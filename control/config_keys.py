"""Every key of ``microsandbox.yaml``, read off the config model, with its Ansible variable.

The model in :mod:`config` is the single source of the keys: their names, types,
defaults, constraints and descriptions. This module flattens it into :class:`Key`
records (in the model's order) and names each key's role variable by one rule,

    ``microsandbox_`` + the key's path joined by ``_``  (``state.lock_ttl`` ->
    ``microsandbox_state_lock_ttl``),

which is also the ``MICROSANDBOX_*`` environment override, lower-cased. Names the role
used before the rule existed are kept, so operators' inventories keep working; they are
listed in :data:`LEGACY_VARIABLES`, the only exceptions. :mod:`config_sources` renders
the example file, the role's defaults and argument specs, the template and the operator
guide's table from these records.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import ENV_PREFIX, Config

ROLE_PREFIX = "microsandbox_"

# Role variables named before the rule: key path -> variable (keep; inventories use them).
LEGACY_VARIABLES: dict[str, str] = {
    "server.host": "microsandbox_bind_address",
    "server.http_port": "microsandbox_http_port",
    "server.ws_port": "microsandbox_ws_port",
    "server.metrics_port": "microsandbox_metrics_port",
    "server.max_message_size": "microsandbox_max_message_size",
    "server.drain_timeout": "microsandbox_drain_timeout",
    "server.allow_unauthenticated": "microsandbox_allow_unauthenticated",
    "sandbox.pool.python.min_instances": "microsandbox_pool_python_min_instances",
    "sandbox.pool.python.max_instances": "microsandbox_pool_python_max_instances",
    "sandbox.pool.nodejs.min_instances": "microsandbox_pool_nodejs_min_instances",
    "sandbox.pool.nodejs.max_instances": "microsandbox_pool_nodejs_max_instances",
    "sandbox.pool.acquire_timeout": "microsandbox_pool_acquire_timeout",
    "sandbox.pool.max_per_actor": "microsandbox_pool_max_per_actor",
    "sandbox.pool.max_queued_per_actor": "microsandbox_pool_max_queued_per_actor",
    "sandbox.pool.idle_timeout": "microsandbox_pool_idle_timeout",
    "sandbox.pool.max_calls": "microsandbox_pool_max_calls",
    "sandbox.docker.python_image": "microsandbox_docker_python_image",
    "sandbox.docker.node_image": "microsandbox_docker_node_image",
    "sandbox.docker.docker_host": "microsandbox_docker_host",
    "logging.level": "microsandbox_log_level",
    "logging.json_format": "microsandbox_log_json",
}


@dataclass(frozen=True)
class RoleChoice:
    """Where the role deploys differently from the model: its default and why."""

    default: Any = None
    note: str = ""


# The role's defaults that differ from the model's (a node of a cluster, not a laptop),
# and notes that only hold for the role. A key absent here defaults to the model's value
# (null becoming "").
ROLE_CHOICES: dict[str, RoleChoice] = {
    "server.host": RoleChoice("0.0.0.0"),
    "server.drain_timeout": RoleChoice(
        30.0, "Keep it at least the call timeout so a rolling restart drops no call."
    ),
    "auth.tokens": RoleChoice(note="From a vault."),
    "sandbox.backend": RoleChoice(note="docker also installs microsandbox_docker_packages."),
    "redis.url": RoleChoice(
        note="Empty: built from microsandbox_redis_host, _port, _db, _username and _password "
        "(an empty host too: SQLite state)."
    ),
    "state.sqlite_path": RoleChoice("/var/lib/reflow-microsandbox/state.db"),
    "scripts.folders": RoleChoice(["/srv/reflow-microsandbox/scripts"]),
    "functions.allow_dependencies": RoleChoice(note="false also leaves npm uninstalled."),
    "functions.dependency_cache": RoleChoice(
        "/var/cache/reflow-microsandbox/functions",
        "The role creates it 0775, its parent 0755.",
    ),
    "logging.json_format": RoleChoice(True, "JSON lines for the journal."),
}

# Role variables whose values Ansible must never print.
NO_LOG = frozenset({"auth.tokens", "redis.url"})

Kind = Literal["bool", "int", "float", "str", "list", "choice"]
_SCALARS: dict[Any, Kind] = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Key:
    """One leaf key of microsandbox.yaml.

    ``path`` is the key's place in the file (``("state", "lock_ttl")``); ``kind`` its
    value type; ``nullable`` whether null is allowed (``str | None``); ``choices`` the
    allowed values of a ``Literal``; ``limits`` the bounds and pattern, as pydantic names
    them (``ge``, ``gt``, ``le``, ``lt``, ``pattern``).
    """

    path: tuple[str, ...]
    kind: Kind
    nullable: bool
    default: Any
    description: str
    choices: tuple[str, ...]
    limits: tuple[tuple[str, Any], ...]
    examples: tuple[Any, ...]

    @property
    def name(self) -> str:
        """The dotted key: ``sandbox.pool.python.min_instances``."""
        return ".".join(self.path)

    @property
    def env(self) -> str:
        """The environment variable that overrides it: ``MICROSANDBOX_STATE_LOCK_TTL``."""
        return ENV_PREFIX + "_".join(self.path).upper()

    @property
    def variable(self) -> str:
        """The microsandbox role's variable for it."""
        return LEGACY_VARIABLES.get(self.name, ROLE_PREFIX + "_".join(self.path))

    @property
    def role(self) -> RoleChoice:
        return ROLE_CHOICES.get(self.name, RoleChoice())

    @property
    def role_default(self) -> Any:
        """The role's default: its own choice, else the model's (null as "")."""
        if self.name in ROLE_CHOICES and self.role.default is not None:
            return self.role.default
        return "" if self.default is None else self.default


@dataclass(frozen=True)
class Section:
    """A mapping of the file (``sandbox.pool``) and the description of its field."""

    path: tuple[str, ...]
    description: str


def walk(defaults: BaseModel | None = None, prefix: tuple[str, ...] = ()) -> list[Key | Section]:
    """Sections and keys of ``defaults`` (default: ``Config()``) in file order, each
    section before its keys; a key's default is its value in ``defaults``.

    Raises TypeError for a field type this module cannot describe (add it here).
    """
    defaults = Config() if defaults is None else defaults
    items: list[Key | Section] = []
    for name, field in type(defaults).model_fields.items():
        path = (*prefix, name)
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            items.append(Section(path, field.description or ""))
            items.extend(walk(value, path))
            continue
        items.append(_key(path, field, value))
    return items


def keys() -> list[Key]:
    """Every leaf key, in file order."""
    return [item for item in walk() if isinstance(item, Key)]


def _key(path: tuple[str, ...], field: FieldInfo, default: Any) -> Key:
    annotation = field.annotation
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        nullable = len(members) < len(get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"{'.'.join(path)}: cannot describe {annotation}")
        annotation = members[0]
    choices: tuple[str, ...] = ()
    kind: Kind
    if get_origin(annotation) is Literal:
        kind, choices = "choice", tuple(str(arg) for arg in get_args(annotation))
    elif get_origin(annotation) is list and get_args(annotation) == (str,):
        kind = "list"
    elif annotation in _SCALARS:
        kind = _SCALARS[annotation]
    else:
        raise TypeError(f"{'.'.join(path)}: cannot describe {annotation}")
    limits = []
    for item in field.metadata:
        for bound in ("ge", "gt", "le", "lt", "pattern"):
            value = getattr(item, bound, None)
            if value is not None:
                limits.append((bound, value))
    return Key(
        path=path,
        kind=kind,
        nullable=nullable,
        default=default,
        description=field.description or "",
        choices=choices,
        limits=tuple(limits),
        examples=tuple(field.examples or ()),
    )
