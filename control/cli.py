"""The ``reflow-microsandbox`` command: ``serve``, ``check-config``, ``run`` and more.

``check-config FILE`` is what Ansible's ``validate:`` calls: exit 0 with a one-line
summary, or non-zero with the config error (naming the key) on stderr; either way it
warns on stderr of each ``MICROSANDBOX_*`` variable that names no key (``serve`` logs the
same warnings at start). ``run`` is for
script authors: one execution of one script with inputs from the command line,
pushes and logs shown as they happen, the outputs printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import ENV_PREFIX, Config, load_config
from .config_env import unknown_variables
from .errors import CallError, ConfigError, RegistryError
from .jsonlimits import huge_number_message, may_hold_huge_number, non_finite_path
from .jsonrpc import decode_json
from .vocabulary import JSON, LANGUAGES, CallContext

T = TypeVar("T")

EXIT_CONFIG = 2
EXIT_FAILED = 1


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.logging.json_format:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level.upper())
    # The websockets library logs every handshake failure at info; keep it quieter.
    logging.getLogger("websockets").setLevel(max(root.level, logging.WARNING))


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (faster sockets), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _summary(config: Config) -> str:
    state = f"redis ({_redacted(config.redis.url)})" if config.redis.url else "sqlite"
    pools = ", ".join(
        f"{language} {config.sandbox.pool.for_language(language).min_instances}"
        f"-{config.sandbox.pool.for_language(language).max_instances}"
        for language in LANGUAGES
    )
    return (
        f"ok: {config.sandbox.backend} sandboxes ({pools}), "
        f"ws {config.server.host}:{config.server.ws_port}, http {config.server.http_port}, "
        f"metrics {config.server.metrics_port or 'off'}, state {state}, "
        f"{len(config.scripts.folders)} script folder(s), "
        f"auth {'on' if config.auth.tokens else 'off'}"
    )


def _redacted(url: str) -> str:
    """A Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


# -- commands ---------------------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    # Warnings, not refusals: deployment tooling sets helpers under the same prefix.
    for unknown in unknown_variables(os.environ):
        print(f"{args.file}: warning: {unknown.message()}", file=sys.stderr)
    try:
        config = load_config(args.file)
    except ConfigError as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for index, folder in enumerate(config.scripts.folders):
        # A warning, not a refusal: the folder may be created after the check (provisioning).
        if not Path(folder).is_dir():
            print(
                f"{args.file}: warning: scripts.folders[{index}]: {folder} is not a folder "
                "(no actors will be found there until it exists)",
                file=sys.stderr,
            )
    print(_summary(config))
    return 0


def _cmd_check_scripts(args: argparse.Namespace) -> int:
    """Discover the actors of the configured script folders; exit 1 naming each problem."""
    from .registry import ActorRegistry

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"reflow-microsandbox: {error}", file=sys.stderr)
        return EXIT_CONFIG
    registry = ActorRegistry(config.scripts.folders, allow_inline=False)
    try:
        registry.discover()
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    for info in registry.all():
        print(f"ok       {info.listed_name:<30} {info.source.language:<7} {info.path}")
    for problem in registry.problems:
        print(f"refused  {problem}", file=sys.stderr)
    return EXIT_FAILED if registry.problems else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    unknown = unknown_variables(os.environ)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for variable in unknown:
            print(f"reflow-microsandbox: warning: {variable.message()}", file=sys.stderr)
        print(f"reflow-microsandbox: {error}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config)
    for variable in unknown:
        logging.getLogger("reflow_microsandbox.config").warning("%s", variable.message())
    from .server import Server

    try:
        _run_loop(Server(config).serve_until_signal())
    except CallError as error:
        print(f"reflow-microsandbox: cannot start: {error.kind}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as error:  # a port in use, a malformed redis.url
        print(f"reflow-microsandbox: cannot start: {error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _parse_inputs(items: Sequence[str]) -> dict[str, JSON]:
    payload: dict[str, JSON] = {}
    for item in items:
        port, sep, raw = item.partition("=")
        if not sep or not port:
            raise ValueError(f"--input {item!r}: expected PORT=VALUE")
        try:  # strict JSON, as a client sends it: NaN and Infinity stay strings
            value = decode_json(raw, huge_numbers=may_hold_huge_number(raw))
        except ValueError:
            value = raw
        where = non_finite_path(value, port)
        if where is not None:
            raise ValueError(f"--input {item!r}: {huge_number_message(where)}")
        payload[port] = value
    return payload


def _short(value: JSON, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class _PrintingSink:
    """Shows pushes and logs on stderr while the script runs."""

    async def output(self, port: str, data: JSON) -> None:
        print(f"push {port}: {_short(data)}", file=sys.stderr, flush=True)

    async def log(self, level: str, message: str) -> None:
        print(f"log {level}: {message}", file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        payload = _parse_inputs(args.input or [])
    except (ConfigError, ValueError) as error:
        print(f"reflow-microsandbox run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    script = Path(args.script).resolve()
    if not script.is_file():
        print(f"reflow-microsandbox run: {args.script}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    # A throwaway pool: nothing pre-warmed, one sandbox for this script.
    for language in LANGUAGES:
        settings = config.sandbox.pool.for_language(language)
        settings.min_instances = 0
        settings.max_instances = 1
    config.scripts.folders = [str(script.parent)]
    if args.config is None and f"{ENV_PREFIX}STATE_SQLITE_PATH" not in os.environ:
        config.state.sqlite_path = str(_run_state_path(os.environ))
    return _run_loop(_run_once(config, script, payload))


def _run_state_path(environ: Mapping[str, str]) -> Path:
    """Where ``run`` without ``--config`` keeps SQLite state (and its ``.locks`` sidecar):
    ``$XDG_STATE_HOME/reflow-microsandbox/run-state.db`` (default ``~/.local/state``,
    the XDG Base Directory spec's place for state), not the current folder; created
    (mode 0700) when missing."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    folder = Path(base) / "reflow-microsandbox"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / "run-state.db"


async def _run_once(config: Config, script: Path, payload: dict[str, JSON]) -> int:
    from .pool import SandboxPool
    from .registry import ActorRegistry
    from .sandbox.factory import create_backend
    from .state import open_store

    try:
        actor = ActorRegistry(config.scripts.folders, allow_inline=False).load_file(str(script))
    except RegistryError as error:
        print(f"reflow-microsandbox run: {error}", file=sys.stderr)
        return EXIT_FAILED
    source = actor.source
    store = open_store(config)
    await store.open()
    backend = create_backend(config)
    pool = SandboxPool(backend, config.sandbox)
    print(
        f"running {source.namespace}:{source.name} ({source.language}, "
        f"{config.sandbox.backend} sandbox, state in {store.name})",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    try:
        await backend.start()
        await pool.start()
        context = CallContext(
            actor_id=source.name,
            namespace=source.namespace,
            payload=payload,
            timestamp=int(time.time() * 1000),
        )
        tx = store.transaction(source.namespace, source.name)
        try:
            outputs = await pool.execute(source, context, tx, _PrintingSink())
            await tx.commit()
        except BaseException:
            await tx.abort()
            raise
    except CallError as error:
        print(f"error ({error.kind}): {error.message}", file=sys.stderr)
        trace = error.details.get("traceback")
        if isinstance(trace, str) and trace:
            print(trace.rstrip(), file=sys.stderr)
        for key, value in error.details.items():
            if key not in ("traceback", "type", "message"):
                print(f"  {key}: {json.dumps(value)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await pool.close()
        await store.close()
    print(json.dumps(outputs, indent=2, ensure_ascii=False))
    print(f"done in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def _cmd_config_sources(args: argparse.Namespace) -> int:
    # Imported here: only developers run this command, never a serving node.
    from .config_sources import ConfigSourcesError, check, write

    root = Path(args.root)
    try:
        if args.write:
            for path in write(root):
                print(f"config-sources: wrote {path}")
            return 0
        drifted = check(root)
    except ConfigSourcesError as error:
        print(f"config-sources: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for diff in drifted.values():
        sys.stdout.write(diff)
    if drifted:
        print(
            f"config-sources: {', '.join(drifted)} differ from the config model: "
            "run reflow-microsandbox config-sources --write",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflow-microsandbox",
        description="Run Reflow's script actors in isolated, pre-warmed sandboxes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve WebSocket JSON-RPC, HTTP and metrics")
    serve.add_argument("--config", help="microsandbox.yaml (default: built-in defaults)")
    serve.set_defaults(func=_cmd_serve)

    check = commands.add_parser("check-config", help="validate a microsandbox.yaml")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check_config)

    scripts = commands.add_parser(
        "check-scripts",
        help="list the actors of the script folders and every file refused, with the reason",
    )
    scripts.add_argument("--config", help="microsandbox.yaml (default: built-in defaults)")
    scripts.set_defaults(func=_cmd_check_scripts)

    run = commands.add_parser("run", help="run a script once, for script authors")
    run.add_argument("script", help="a .py or .js actor script")
    run.add_argument(
        "--input",
        action="append",
        metavar="PORT=VALUE",
        help="an inport value (JSON when it parses, else a string); repeatable",
    )
    run.add_argument("--config", help="microsandbox.yaml (default: built-in defaults)")
    run.set_defaults(func=_cmd_run)

    sources = commands.add_parser(
        "config-sources",
        help="check (or --write) the files generated from the config model: the example "
        "file, the role's defaults and argument specs, the template, the docs' table",
    )
    sources.add_argument("--write", action="store_true", help="regenerate what drifted")
    sources.add_argument("--root", default=".", help="the repository (default: .)")
    sources.set_defaults(func=_cmd_config_sources)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
