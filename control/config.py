"""The microsandbox.yaml model: defaults, ``MICROSANDBOX_*`` overrides, validation.

Every key of the file can be overridden by an environment variable named after its
path: ``sandbox.memory_mb`` by ``MICROSANDBOX_SANDBOX_MEMORY_MB``,
``sandbox.pool.python.min_instances`` by ``MICROSANDBOX_SANDBOX_POOL_PYTHON_MIN_INSTANCES``,
``redis.url`` by ``MICROSANDBOX_REDIS_URL``. Lists take a comma-separated value.
Errors name the key and the allowed values (:class:`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .vocabulary import Language

ENV_PREFIX = "MICROSANDBOX_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    http_port: int = Field(5555, ge=1, le=65535)
    ws_port: int = Field(5556, ge=1, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535, description="0 turns the endpoint off")
    max_message_size: int = Field(16 * 1024 * 1024, ge=1024)
    drain_timeout: float = Field(20.0, ge=0)
    # Serving a non-loopback address without auth tokens needs this set on purpose.
    allow_unauthenticated: bool = False


class AuthConfig(_Section):
    tokens: list[str] = Field(default_factory=list)


class PoolLanguageConfig(_Section):
    min_instances: int = Field(2, ge=0, le=1000)
    max_instances: int = Field(20, ge=1, le=10000)

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolLanguageConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        return self


class PoolConfig(_Section):
    python: PoolLanguageConfig = Field(default_factory=PoolLanguageConfig)
    nodejs: PoolLanguageConfig = Field(
        default_factory=lambda: PoolLanguageConfig(min_instances=1, max_instances=20)
    )
    acquire_timeout: float = Field(5.0, gt=0, le=60)
    max_per_actor: int = Field(4, ge=1, le=1000)
    # Calls of one actor that may wait for a sandbox beyond the max_per_actor that can
    # run at once; more are refused at once with pool_exhausted instead of waiting.
    max_queued_per_actor: int = Field(256, ge=0, le=100000)
    # Calls of one actor started per second at most (0: unpaced); max_per_actor may start
    # at once. Calls beyond wait before they start, or are refused with pool_exhausted
    # (reason rate_limited) when they would wait longer than acquire_timeout.
    max_calls_per_second_per_actor: float = Field(0.0, ge=0, le=1_000_000)
    # seconds before an idle bound sandbox is recycled
    idle_timeout: float = Field(300.0, gt=0)
    max_calls: int = Field(10000, ge=1, description="calls after which a sandbox is recycled")

    def for_language(self, language: Language) -> PoolLanguageConfig:
        return self.python if language == "python" else self.nodejs


class DockerConfig(_Section):
    python_image: str = "reflow-microsandbox/python-runner:latest"
    node_image: str = "reflow-microsandbox/node-runner:latest"
    docker_host: str | None = None


class SandboxConfig(_Section):
    backend: Literal["bubblewrap", "docker"] = "bubblewrap"
    memory_mb: int = Field(256, ge=16, le=65536)
    cpu_limit: float = Field(0.5, gt=0, le=64)
    # true: cpu_limit holds for all of one actor's sandboxes together (each of k gets
    # cpu_limit/k), so an actor's endless loops take one cpu_limit however many sandboxes
    # it runs; false: cpu_limit per sandbox (an actor may use max_per_actor x cpu_limit).
    cpu_limit_per_actor: bool = False
    max_processes: int = Field(32, ge=1, le=4096)
    max_open_files: int = Field(256, ge=16, le=65536)
    max_file_size_mb: int = Field(16, ge=1, le=65536)
    tmp_size_mb: int = Field(32, ge=1, le=65536)
    call_timeout: float = Field(25.0, gt=0, lt=30, description="below Reflow's 30 s client timeout")
    max_output_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    package_dirs: list[str] = Field(default_factory=list, description="read-only extra dirs")
    # The interpreters bubblewrap sandboxes run (absolute paths; the sandbox sees what each
    # one needs, asked of the interpreter itself at start).
    python_binary: str = Field("/usr/bin/python3", pattern=r"^/")
    node_binary: str = Field("/usr/bin/node", pattern=r"^/")
    # Without cgroups (no writable hierarchy, or cgroup v2 without Delegate=yes) sandboxes
    # get no CPU limit and Node no memory limit: the bubblewrap backend refuses to start
    # unless this is set on purpose (sandbox/enforced.py lists what rlimits still give).
    allow_rlimits_only: bool = False
    pool: PoolConfig = Field(default_factory=PoolConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)


class CompressionConfig(_Section):
    algorithm: Literal["zstd", "none"] = "zstd"
    threshold: int = Field(1024, ge=0, description="bytes; 0 turns compression off")
    level: int = Field(3, ge=1, le=22)


class RedisConfig(_Section):
    url: str | None = None
    max_connections: int = Field(64, ge=1)
    socket_timeout: float = Field(2.0, gt=0)


class StateConfig(_Section):
    sqlite_path: str = "./microsandbox-state.db"
    compression_threshold: int = Field(1024, ge=0, description="bytes; 0 = never compress")
    # How long a call waits for its actor's state lock (held by another call of the
    # same actor) before failing with state_error; keep it below sandbox.call_timeout.
    lock_timeout: float = Field(20.0, gt=0, le=600)
    # Lease of the Redis lock, refreshed every third of it while held; a crashed
    # holder's lock frees itself after this long.
    lock_ttl: float = Field(10.0, ge=1, le=600)


class ScriptsConfig(_Section):
    folders: list[str] = Field(default_factory=lambda: ["./examples"])
    allow_inline: bool = False


class FunctionsConfig(_Section):
    """Reflow's deploy-then-call API: ``/api/v1/functions`` and ``<ws base>/<function_id>``."""

    # Deployed functions held at once, cluster-wide (deploys beyond it are refused).
    max_functions: int = Field(1000, ge=1, le=1_000_000)
    # Largest accepted script, in bytes of UTF-8.
    max_code_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Seconds a function may go without a deploy or a call before it is removed.
    idle_timeout: float = Field(86400.0, gt=0)
    # Seconds a deploy waits for its dependencies before it answers with state "deploying".
    install_wait: float = Field(20.0, ge=0, le=3600)
    # Seconds one pip or npm run may take before it is killed and the install fails.
    install_timeout: float = Field(300.0, gt=0, le=3600)
    # false refuses every deploy that names dependencies (the node then reaches no registry).
    allow_dependencies: bool = True
    max_dependencies: int = Field(32, ge=0, le=1000)
    # Node-local cache of installed dependency sets; sandboxes must be able to read it.
    dependency_cache: str = "./microsandbox-functions"
    # pip's --index-url for Python dependencies (null: pip's own configuration, else PyPI).
    pip_index_url: str | None = None
    # npm's --registry for Node dependencies (null: npm's own configuration, else npmjs.org).
    npm_registry: str | None = None


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_format: bool = False


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    scripts: ScriptsConfig = Field(default_factory=ScriptsConfig)
    functions: FunctionsConfig = Field(default_factory=FunctionsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _public_bind_needs_auth(self) -> Config:
        if (
            not _is_loopback(self.server.host)
            and not self.auth.tokens
            and not self.server.allow_unauthenticated
        ):
            raise ValueError(
                f"server.host is {self.server.host!r} (not loopback) but auth.tokens is empty: "
                "set auth.tokens, or server.allow_unauthenticated: true to serve without auth"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict of the values that ``MICROSANDBOX_*`` variables set."""
    result: dict[str, Any] = {}
    table = _env_table(Config, ())
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = table.get(name)
        if path is None:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        leaf_type = _leaf_annotation(path)
        node[path[-1]] = _parse_env_value(value, leaf_type)
    return result


def _env_table(model: type[BaseModel], prefix: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for field_name, field in model.model_fields.items():
        path = (*prefix, field_name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            table.update(_env_table(annotation, path))
        else:
            table[ENV_PREFIX + "_".join(path).upper()] = path
    return table


def _leaf_annotation(path: tuple[str, ...]) -> Any:
    model: type[BaseModel] = Config
    for part in path[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type)
        model = annotation
    return model.model_fields[path[-1]].annotation


def _parse_env_value(value: str, annotation: Any) -> Any:
    if get_origin(annotation) is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    if annotation is bool:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if value.strip().lower() in {"", "null", "none"} and type(None) in get_args(annotation):
        return None
    return value


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(file)"
        message = item["msg"]
        ctx = item.get("ctx") or {}
        if "expected" in ctx:
            message = f"{message} (allowed: {ctx['expected']})"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "invalid configuration: " + "; ".join(lines)


def parse_config(
    data: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the config from a parsed YAML mapping plus environment overrides."""
    raw: dict[str, Any] = dict(data or {})
    if environ is not None:
        raw = deep_merge(raw, env_overrides(environ))
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``microsandbox.yaml`` (or only defaults when ``path`` is None) and validate it.

    Relative paths inside the file (script folders, the SQLite file) are resolved
    against the file's own folder.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read {file}: {error.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{file} is not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
        data = loaded
        base_dir = file.resolve().parent
    config = parse_config(data, environ)
    config.scripts.folders = [
        str((base_dir / folder).resolve()) for folder in config.scripts.folders
    ]
    config.state.sqlite_path = str((base_dir / config.state.sqlite_path).resolve())
    config.functions.dependency_cache = str(
        (base_dir / config.functions.dependency_cache).resolve()
    )
    return config
