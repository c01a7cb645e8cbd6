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


# Each field's description is its documentation: the commented example file, the
# role's defaults and argument specs and the operator guide's table are generated from
# it (config_sources.py; ``reflow-microsandbox config-sources --write``).


class ServerConfig(_Section):
    host: str = Field(
        "127.0.0.1",
        description="Address the WebSocket, HTTP and metrics endpoints bind to. A non-loopback "
        "address needs auth.tokens, or server.allow_unauthenticated: true.",
    )
    http_port: int = Field(
        5555, ge=1, le=65535, description="HTTP port: GET /health, GET /ready, POST /api/v1/rpc."
    )
    ws_port: int = Field(
        5556, ge=1, le=65535, description="WebSocket JSON-RPC port, the one Reflow connects to."
    )
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Prometheus /metrics port; 0 turns the endpoint off."
    )
    max_message_size: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest inbound message in bytes, after permessage-deflate or zstd "
        "decompression (a bigger WebSocket message closes the connection with 1009; HTTP "
        "answers 413).",
    )
    drain_timeout: float = Field(
        20.0,
        ge=0,
        description="Seconds running calls get to finish on SIGTERM before their sandboxes are "
        "killed.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve a non-loopback host without auth tokens, set on purpose. Only behind "
        "something that authenticates.",
    )


class AuthConfig(_Section):
    tokens: list[str] = Field(
        default_factory=list,
        description="Bearer tokens; empty: no auth. A WebSocket client presents one as "
        '?token=... (Reflow cannot set headers) or "Authorization: Bearer ...", HTTP clients by '
        "the header; /health and /ready stay open for load balancers.",
        examples=[["change-me-to-a-long-random-string"]],
    )


class PoolLanguageConfig(_Section):
    min_instances: int = Field(
        2, ge=0, le=1000, description="Sandboxes kept warm (started, nothing loaded)."
    )
    max_instances: int = Field(
        20, ge=1, le=10000, description="Most sandboxes of the language that may run at once."
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolLanguageConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        return self


class PoolConfig(_Section):
    python: PoolLanguageConfig = Field(
        default_factory=PoolLanguageConfig, description="The pool of Python sandboxes."
    )
    nodejs: PoolLanguageConfig = Field(
        default_factory=lambda: PoolLanguageConfig(min_instances=1, max_instances=20),
        description="The pool of Node.js sandboxes.",
    )
    acquire_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds a call waits for a sandbox before failing with pool_exhausted.",
    )
    max_per_actor: int = Field(
        4,
        ge=1,
        le=1000,
        description="Sandboxes one actor may hold at once (its calls run in parallel up to this).",
    )
    max_queued_per_actor: int = Field(
        256,
        ge=0,
        le=100000,
        description="Calls of one actor that may wait for a sandbox beyond the max_per_actor "
        'that run at once; more fail at once with pool_exhausted (data.reason "queue_full") '
        "instead of waiting.",
    )
    idle_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds an actor's unused sandbox is kept before it is recycled.",
    )
    max_calls: int = Field(
        10000, ge=1, description="Calls after which a sandbox is replaced by a fresh one."
    )
    max_calls_per_second_per_actor: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="Calls of one actor started per second at most (0: unpaced); max_per_actor "
        "may start at once. Calls beyond wait before they start, or fail at once with "
        'pool_exhausted (data.reason "rate_limited") when they would wait longer than '
        "acquire_timeout. Bounds the share of the node one actor's flood of fast calls takes.",
    )
    crash_loop_threshold: int = Field(
        3,
        ge=0,
        le=1000,
        description="Calls of one actor in a row that kill their sandbox (out of memory, crashed, "
        "output_too_large) before its calls are refused for a while (0: never): they fail at "
        "once with "
        'pool_exhausted (data.reason "crash_loop") instead of costing a new sandbox each.',
    )
    crash_loop_backoff: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Seconds of the first crash-loop wait; it doubles with every further death "
        "up to crash_loop_backoff_max, and a call that returns ends it.",
    )
    crash_loop_backoff_max: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest crash-loop wait, in seconds (at least crash_loop_backoff).",
    )

    @model_validator(mode="after")
    def _backoff_within_max(self) -> PoolConfig:
        if self.crash_loop_backoff > self.crash_loop_backoff_max:
            raise ValueError("crash_loop_backoff must not exceed crash_loop_backoff_max")
        return self

    def for_language(self, language: Language) -> PoolLanguageConfig:
        return self.python if language == "python" else self.nodejs


class DockerConfig(_Section):
    python_image: str = Field(
        "reflow-microsandbox/python-runner:latest",
        description="Runner image of Python actors on the docker backend (built by "
        "scripts/build-images.sh).",
    )
    node_image: str = Field(
        "reflow-microsandbox/node-runner:latest",
        description="Runner image of Node.js actors on the docker backend.",
    )
    docker_host: str | None = Field(
        None, description="Docker engine address; null uses DOCKER_HOST or the local socket."
    )


class SandboxConfig(_Section):
    backend: Literal["bubblewrap", "docker"] = Field(
        "bubblewrap",
        description="bubblewrap (Linux namespaces, no daemon) or docker (one container per "
        "sandbox).",
    )
    memory_mb: int = Field(256, ge=16, le=65536, description="Memory limit per sandbox, MiB.")
    cpu_limit: float = Field(0.5, gt=0, le=64, description="CPU cores per sandbox.")
    cpu_limit_per_actor: bool = Field(
        False,
        description="true: cpu_limit holds for all of one actor's sandboxes together (each of "
        "k gets cpu_limit/k; bubblewrap only), so an actor's endless loops take one cpu_limit "
        "however many sandboxes it runs; false: cpu_limit per sandbox.",
    )
    max_processes: int = Field(32, ge=1, le=4096, description="Processes per sandbox.")
    max_open_files: int = Field(256, ge=16, le=65536, description="Open files per sandbox.")
    max_file_size_mb: int = Field(
        16, ge=1, le=65536, description="Largest file a sandbox may write, MiB."
    )
    tmp_size_mb: int = Field(
        32, ge=1, le=65536, description="Size of the sandbox's private /tmp, MiB."
    )
    call_timeout: float = Field(
        25.0,
        gt=0,
        lt=30,
        description="Wall-clock limit of one call, in seconds; below Reflow's 30 s client timeout.",
    )
    start_timeout: float = Field(
        20.0,
        gt=0,
        le=600,
        description="Seconds a new sandbox may take from its start until its runner reports "
        "ready, before it is thrown away as unavailable (raise it on slow or emulated hosts).",
    )
    max_output_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Cap on what one call may output (returned outputs, pushes and logs "
        "together), bytes.",
    )
    max_log_chars_per_second_per_actor: int = Field(
        256 * 1024,
        ge=0,
        le=1024 * 1024 * 1024,
        description="Characters of log text (prints, raw writes to stdout/stderr, context.log) "
        "of one actor relayed to clients as log events per second, a second's worth at once "
        "(0: no budget). Lines over it are dropped, with one warning event per call saying so "
        "and microsandbox_log_dropped_characters counting them; they still count against "
        "max_output_bytes. Bounds the share of the node one actor's output flood takes.",
    )
    package_dirs: list[str] = Field(
        default_factory=list,
        description="Extra host folders mounted read-only into every sandbox (site-packages, "
        "node_modules). Each must exist: the server refuses to start when one is missing.",
    )
    python_binary: str = Field(
        "/usr/bin/python3",
        pattern=r"^/",
        description="The Python interpreter of bubblewrap sandboxes (an absolute path). Each "
        "sandbox sees only what its interpreter needs, asked of the interpreter at start "
        "(its stdlib folders, the libraries it links), and one sandbox of each language is "
        "started then: a piece the view lacks stops the server with the interpreter's own "
        "error. A missing interpreter is an error when its pool keeps warm sandboxes "
        "(min_instances above 0), else a warning.",
    )
    node_binary: str = Field(
        "/usr/bin/node",
        pattern=r"^/",
        description="The Node.js interpreter of bubblewrap sandboxes (an absolute path; its "
        "view is built as python_binary's, with the folders Debian's Node loads its builtins "
        "from).",
    )
    allow_rlimits_only: bool = Field(
        False,
        description="Start on rlimits alone where the host gives no cgroup limits. The "
        "bubblewrap backend enforces memory, CPU and process limits with cgroups (v2 under a "
        "systemd unit with Delegate=yes, or v1); without them sandboxes get no CPU limit and "
        "Node no memory limit (Python's is then an address-space limit), so the server "
        "refuses to start unless this is true. /metrics shows what is in force: "
        "microsandbox_sandbox_limits_enforced{language,limit,mechanism} (0 = not enforced).",
    )
    pool: PoolConfig = Field(
        default_factory=PoolConfig,
        description="Warm sandboxes per language and how calls share them.",
    )
    docker: DockerConfig = Field(default_factory=DockerConfig, description="The docker backend.")


class CompressionConfig(_Section):
    algorithm: Literal["zstd", "none"] = Field(
        "zstd",
        description="zstd or none. Applies to WebSocket replies to clients that opted in "
        "(they sent a binary zstd frame or connected with ?compression=zstd) and to state "
        "values.",
    )
    threshold: int = Field(
        1024,
        ge=0,
        description="Messages whose JSON exceeds this many bytes are compressed; 0 turns it off.",
    )
    level: int = Field(3, ge=1, le=22, description="zstd level, 1 (fast) to 22 (small).")


class RedisConfig(_Section):
    url: str | None = Field(
        None,
        description="The state store's redis:// URL. null: state lives in the SQLite file of "
        "state.sqlite_path (one node only). The redis_url clients send in their params is "
        "always ignored.",
        examples=["redis://:password@127.0.0.1:6379/0"],
    )
    max_connections: int = Field(64, ge=1, description="Redis connections per node.")
    socket_timeout: float = Field(
        2.0, gt=0, description="Seconds before a Redis command counts as failed."
    )


class StateConfig(_Section):
    sqlite_path: str = Field(
        "./microsandbox-state.db", description="The embedded store, used when redis.url is null."
    )
    compression_threshold: int = Field(
        1024,
        ge=0,
        description="State values above this many bytes are stored zstd-compressed; 0 = never.",
    )
    lock_timeout: float = Field(
        20.0,
        gt=0,
        le=600,
        description="Seconds a call waits for its actor's state lock (held by another call of "
        "the same actor) before failing with state_error; keep it below sandbox.call_timeout.",
    )
    lock_ttl: float = Field(
        10.0,
        ge=1,
        le=600,
        description="Lease of the Redis state lock, in seconds, refreshed every third of it "
        "while held: a crashed holder's lock frees itself after this long.",
    )


class ScriptsConfig(_Section):
    folders: list[str] = Field(
        default_factory=lambda: ["./examples"],
        description="Folders scanned for actor scripts at start. The namespace of a script is "
        'its sub-folder path, dotted (a/b/x.py -> "a.b"); scripts at the root are "default".',
    )
    allow_inline: bool = Field(
        False,
        description='Let clients send script source with load ({"source", "language", "name"}).',
    )


class FunctionsConfig(_Section):
    """Reflow's deploy-then-call API: ``/api/v1/functions`` and ``<ws base>/<function_id>``."""

    max_functions: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Deployed functions held at once across the cluster; deploys beyond it "
        "are refused.",
    )
    max_code_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest accepted script, in bytes of UTF-8.",
    )
    idle_timeout: float = Field(
        86400.0,
        gt=0,
        description="Seconds a function may go without a deploy or a call before it is removed "
        "(Reflow may die without undeploying).",
    )
    install_wait: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="Seconds a deploy waits for its dependencies to install before it answers, "
        'then reports state "deploying" until they are ready.',
    )
    install_timeout: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="Seconds one pip or npm run may take before it is killed and the install "
        "fails.",
    )
    allow_dependencies: bool = Field(
        True,
        description="false refuses deploys that name dependencies: the node then reaches no "
        "registry.",
    )
    max_dependencies: int = Field(
        32, ge=0, le=1000, description="Most dependencies one function may name."
    )
    dependency_cache: str = Field(
        "./microsandbox-functions",
        description="Node-local cache of installed dependency sets (one folder per exact set), "
        "mounted read-only into the sandboxes of the functions that use it: every folder "
        "above it must be world-traversable (sandboxes run as unprivileged uids).",
    )
    pip_index_url: str | None = Field(
        None,
        description="Package index of Python dependencies, installed as wheels only (pip "
        "--index-url, --only-binary :all:); null: pip's own configuration (pip.conf, "
        "PIP_INDEX_URL), else PyPI.",
        examples=["https://pypi-mirror.example/simple"],
    )
    npm_registry: str | None = Field(
        None,
        description="Registry of Node dependencies, install scripts disabled (npm --registry, "
        "--ignore-scripts); null: npm's own configuration (.npmrc), else registry.npmjs.org.",
        examples=["https://npm-mirror.example/"],
    )


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error."
    )
    json_format: bool = Field(False, description="One JSON object per log line.")


class Config(_Section):
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="Where the endpoints listen and how they stop."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Client authentication.")
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig,
        description="The backend and the limits of every sandbox.",
    )
    compression: CompressionConfig = Field(
        default_factory=CompressionConfig, description="zstd compression of replies and state."
    )
    redis: RedisConfig = Field(default_factory=RedisConfig, description="The shared state store.")
    state: StateConfig = Field(
        default_factory=StateConfig, description="Actor state, in Redis or the embedded SQLite."
    )
    scripts: ScriptsConfig = Field(
        default_factory=ScriptsConfig, description="Where actor scripts come from."
    )
    functions: FunctionsConfig = Field(
        default_factory=FunctionsConfig,
        description="Reflow's deploy-then-call API: POST /api/v1/functions on the HTTP port, "
        'then the WebSocket at <ws base>/<function_id> (README, "Deploy-then-call").',
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="The server's log.")

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
