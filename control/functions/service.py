"""Deploy, status, undeploy and the per-call lookup of deployed functions, tied together.

:class:`FunctionService` is what the HTTP routes and the WebSocket transport call. A
deploy is checked (body, runtime, size, dependencies, syntax) before anything is
stored; its code is stored once per content digest, its deployment counted against
``functions.max_functions``; dependencies are installed while the deploy waits up to
``functions.install_wait``, then in the background with the state ``deploying``.

A call on ``<ws base>/<id>`` looks the function up in the store every time (so an
undeploy on one node stops calls on every node), counts the invocation there, and
runs the code kept in this node's memory by digest: a node that never saw a function
reads its code from the store on its first call (and installs its dependencies from
the lock the deploying node recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import CallError, StateError
from ..jsonrpc import SANDBOX_ERROR_CODES, RpcError
from ..pool import SandboxPool
from ..vocabulary import JSON, ActorSource, CallContext, Language
from .dependencies import DependencyError, Pairs, normalise
from .installer import DependencyInstaller, InstallError
from .metrics import FunctionMetrics
from .model import (
    FUNCTION_ID,
    DeployError,
    FunctionCode,
    FunctionRecord,
    check_runtime,
    deploy_failed,
    deploy_succeeded,
    new_function_id,
    parse_deploy,
    script_filename,
    unknown_status,
)
from .store import FunctionStore
from .syntax import CHECKER_FILENAME, NO_ACTOR, checker_source, problem_from_load_error

log = logging.getLogger(__name__)

FUNCTION_NOT_FOUND = -32010
"""The same code as an unknown actor (``data.kind`` ``not_found``)."""

REFLOW_DEFAULT_TIMEOUT = 300
"""What Reflow sends as ``timeout_seconds`` when a script states none."""

LOCAL_CODE_ENTRIES = 256
"""Functions whose code one node keeps in memory (least recently called dropped first)."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: the status code and the JSON body."""

    status: int
    body: dict[str, JSON]


@dataclass
class _Loaded:
    actor: ActorSource
    package_dir: str | None
    last_used: float = field(default_factory=time.monotonic)


class _NoState:
    """State for the syntax checker, which never asks for any."""

    async def get(self, key: str, default: JSON = None) -> JSON:
        raise StateError("no state during a syntax check")

    async def set(self, key: str, value: JSON) -> None:
        raise StateError("no state during a syntax check")

    async def delete(self, key: str) -> None:
        raise StateError("no state during a syntax check")

    async def increment(self, key: str, by: int | float = 1) -> int | float:
        raise StateError("no state during a syntax check")


class _NoEvents:
    async def output(self, port: str, data: JSON) -> None:
        pass

    async def log(self, level: str, message: str) -> None:
        pass


class FunctionService:
    """The deploy-then-call API of one node."""

    def __init__(
        self,
        config: Config,
        store: FunctionStore,
        pool: SandboxPool,
        installer: DependencyInstaller,
        metrics: FunctionMetrics,
    ) -> None:
        self._settings = config.functions
        self._call_timeout = config.sandbox.call_timeout
        self._store = store
        self._pool = pool
        self._installer = installer
        self._metrics = metrics
        self._local: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Task[_Loaded]] = {}
        self._checks: dict[str, asyncio.Task[bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        problem = self._installer.problem()
        if problem is not None and self._settings.allow_dependencies:
            log.warning("function dependencies cannot be installed: %s", problem)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="functions-sweeper")

    def stop_accepting(self) -> None:
        """Refuse deploys from now on (the server is draining)."""
        self.draining = True

    async def close(self) -> None:
        tasks = list(self._tasks) + list(self._loading.values()) + list(self._checks.values())
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._installer.close()

    # -- deploy -------------------------------------------------------------------------

    async def deploy(self, body: bytes) -> Reply:
        """``POST /api/v1/functions``: 200 with the function id, else ``success: false``."""
        started = time.monotonic()
        runtime = "unknown"
        try:
            if self.draining:
                raise DeployError(
                    503, "the server is shutting down: deploy on another node", "draining"
                )
            request = parse_deploy(body)
            language = check_runtime(request.runtime)
            runtime = language
            code, new = await self._store_code(
                request.code, language, request.name, request.dependencies
            )
            record = FunctionRecord(
                id=new_function_id(),
                name=request.name,
                runtime=language,
                handler=request.handler or request.name,
                digest=code.digest,
                timeout_seconds=request.timeout_seconds or REFLOW_DEFAULT_TIMEOUT,
                state="deploying" if code.dependencies else "ready",
                created_ms=int(time.time() * 1000),
            )
            settings = self._settings
            if not await self._store.create(record, settings.idle_timeout, settings.max_functions):
                raise DeployError(
                    507,
                    f"{settings.max_functions} functions are deployed, the most this cluster "
                    "holds (functions.max_functions): undeploy some, or wait until unused ones "
                    f"expire ({settings.idle_timeout:g} s without a call)",
                    "limit",
                )
            if code.dependencies:
                await self._install_for_deploy(record, code)
        except DeployError as error:
            self._metrics.deploy(runtime, error.outcome)
            return Reply(error.status, deploy_failed(error.message))
        except CallError as error:
            self._metrics.deploy(runtime, "store_error")
            return Reply(503, deploy_failed(f"the function store failed: {error.message}"))
        self._metrics.deploy(runtime, "new" if new else "cached")
        self._background(self._refresh_count())
        elapsed = int((time.monotonic() - started) * 1000)
        return Reply(200, deploy_succeeded(record.id, elapsed))

    async def _store_code(
        self, source: str, language: Language, name: str, dependencies: dict[str, str] | None
    ) -> tuple[FunctionCode, bool]:
        """Check the code and store it once per digest; (the code, whether it was new)."""
        settings = self._settings
        if not source.strip():
            raise DeployError(400, "code is empty", "bad_request")
        size = len(source.encode("utf-8", "surrogatepass"))
        if size > settings.max_code_bytes:
            raise DeployError(
                413,
                f"code is {size} bytes, more than the {settings.max_code_bytes} this server "
                "accepts (functions.max_code_bytes)",
                "too_large",
            )
        try:
            pairs = normalise(language, dependencies, settings.max_dependencies)
        except DependencyError as error:
            raise DeployError(422, f"dependencies: {error}", "bad_dependencies") from None
        if pairs:
            self._check_dependencies_allowed()
        code = FunctionCode(language, source, pairs)
        digest = code.digest
        # Deploys of the same code at once (Reflow deploys every actor instance of a
        # graph together) share one look-up, one check and one write.
        task = self._checks.get(digest)
        if task is not None:
            await asyncio.shield(task)
            return code, False
        task = asyncio.create_task(self._check_and_store(code, script_filename(name, language)))
        self._checks[digest] = task
        task.add_done_callback(lambda _: self._checks.pop(digest, None))
        return code, await asyncio.shield(task)

    async def _check_and_store(self, code: FunctionCode, filename: str) -> bool:
        """Store ``code`` unless stored already, after its syntax check; whether it was new."""
        ttl = self._settings.idle_timeout
        if await self._store.load_code(code.digest, ttl) is not None:
            return False
        # With dependencies the module body cannot run yet (they are not installed).
        problem = await self._check_syntax(
            code.runtime, code.code, filename, run=not code.dependencies
        )
        if problem is not None:
            outcome = "no_actor" if problem.startswith(NO_ACTOR) else "syntax_error"
            raise DeployError(422, problem, outcome)
        await self._store.save_code(code.digest, code.to_bytes(), ttl)
        return True

    def _check_dependencies_allowed(self) -> None:
        if not self._settings.allow_dependencies:
            raise DeployError(
                422,
                "this server installs no dependencies (functions.allow_dependencies: false)",
                "bad_dependencies",
            )
        problem = self._installer.problem()
        if problem is not None:
            raise DeployError(503, problem, "dependency_error")

    async def _check_syntax(
        self, language: Language, source: str, filename: str, *, run: bool
    ) -> str | None:
        """The compiler's complaint about ``source`` (or that it defines no actor), or
        None; checked in a sandbox (see :mod:`.syntax`; ``run``: JavaScript's body may run)."""
        checker = ActorSource(
            name="syntax-check",
            namespace=f"msb.check.{new_function_id()}",
            language=language,
            source=checker_source(language, source, filename, run=run),
            filename=CHECKER_FILENAME,
        )
        context = CallContext(actor_id="syntax-check", namespace=checker.namespace)
        try:
            await self._pool.execute(checker, context, _NoState(), _NoEvents())
        except CallError as error:
            if error.kind == "load_error":
                return problem_from_load_error(error.message, error.details)
            raise DeployError(
                503, f"the syntax check could not run: {error.message}", "check_failed"
            ) from None
        finally:
            await self._pool.unload(checker.key)
        return None

    async def _install_for_deploy(self, record: FunctionRecord, code: FunctionCode) -> None:
        """Install while the deploy waits (up to ``install_wait``), then in the background."""
        task = self._background(self._install_and_mark(record, code))
        done, _ = await asyncio.wait({task}, timeout=self._settings.install_wait)
        if not done:
            return  # status says "deploying" until the background install ends
        problem = task.result()
        if problem is not None:
            with contextlib.suppress(CallError):
                await self._store.delete(record.id)
            raise DeployError(
                422, f"the dependencies could not be installed: {problem}", "dependency_error"
            )

    async def _install_and_mark(self, record: FunctionRecord, code: FunctionCode) -> str | None:
        try:
            await self._installer.ensure(code.runtime, code.dependencies)
        except InstallError as error:
            problem = str(error)
            log.info("dependencies of function %s failed: %s", record.id, problem)
            with contextlib.suppress(CallError):
                await self._store.set_state(record.id, "failed", problem)
            return problem
        except CallError as error:
            problem = f"the function store failed: {error.message}"
            with contextlib.suppress(CallError):
                await self._store.set_state(record.id, "failed", problem)
            return problem
        with contextlib.suppress(CallError):
            await self._store.set_state(record.id, "ready")
        return None

    # -- status / undeploy ----------------------------------------------------------------

    async def status(self, function_id: str) -> Reply:
        """``GET /api/v1/functions/{id}``: the camelCase status Reflow polls."""
        if not FUNCTION_ID.fullmatch(function_id):
            return Reply(404, unknown_status(function_id[:64]))
        try:
            record = await self._store.get(function_id)
        except CallError as error:
            # "starting" keeps Reflow polling through a short store outage.
            body = {**unknown_status(function_id), "state": "starting", "error": error.message}
            return Reply(503, body)
        if record is None:
            return Reply(404, unknown_status(function_id))
        return Reply(200, record.status())

    async def undeploy(self, function_id: str) -> Reply:
        """``POST /api/v1/functions/{id}/undeploy``: calls fail from now on, on every node."""
        try:
            known = FUNCTION_ID.fullmatch(function_id) is not None
            record = await self._store.delete(function_id) if known else None
        except CallError as error:
            self._metrics.undeploy("store_error")
            return Reply(503, {"success": False, "error": error.message})
        if record is None:
            self._metrics.undeploy("unknown")
            return Reply(
                404, {"success": False, "error": f"function {function_id[:64]} is not deployed"}
            )
        self._metrics.undeploy("removed")
        self._background(self._refresh_count())
        return Reply(200, {"success": True, "function_id": function_id, "error": None})

    # -- calls --------------------------------------------------------------------------------

    def binding(self, function_id: str) -> FunctionBinding:
        """What one WebSocket connection on ``<ws base>/<function_id>`` resolves calls with."""
        return FunctionBinding(self, function_id)

    async def resolve(self, function_id: str) -> tuple[ActorSource, float]:
        """The code to run for one call and its time limit (seconds); ``RpcError`` when
        the function is not deployed or not ready. Counts the invocation."""
        try:
            record = await self._store.touch(function_id, self._settings.idle_timeout)
        except CallError as error:
            raise _store_failed(error) from None
        if record is None:
            raise RpcError(
                FUNCTION_NOT_FOUND,
                f"function {function_id} is not deployed: it was undeployed, went unused "
                f"for more than {self._settings.idle_timeout:g} s, or never existed",
                {"kind": "not_found", "function_id": function_id},
            )
        if record.state == "deploying":
            raise RpcError(
                SANDBOX_ERROR_CODES["unavailable"],
                f"function {function_id} is still installing its dependencies",
                {"kind": "unavailable", "function_id": function_id},
            )
        if record.state == "failed":
            raise RpcError(
                SANDBOX_ERROR_CODES["load_error"],
                f"function {function_id} failed to deploy: {record.error}",
                {"kind": "load_error", "function_id": function_id},
            )
        loaded = await self._loaded(record)
        return loaded.actor, float(min(record.timeout_seconds, self._call_timeout))

    async def _loaded(self, record: FunctionRecord) -> _Loaded:
        key = (record.digest, record.name)
        entry = self._local.get(key)
        if entry is not None:
            self._local.move_to_end(key)
            entry.last_used = time.monotonic()
            return entry
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(record))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        entry = await asyncio.shield(task)
        self._local[key] = entry
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_CODE_ENTRIES:
            self._local.popitem(last=False)
        self._metrics.loaded.set(len(self._local))
        return entry

    async def _load(self, record: FunctionRecord) -> _Loaded:
        """Read the code from the store and install its dependencies on this node."""
        fid = record.id
        try:
            data = await self._store.load_code(record.digest, self._settings.idle_timeout)
        except CallError as error:
            raise _store_failed(error) from None
        if data is None:
            raise RpcError(
                FUNCTION_NOT_FOUND,
                f"the code of function {fid} is no longer stored (it expired)",
                {"kind": "not_found", "function_id": fid},
            )
        try:
            code = FunctionCode.from_bytes(data, record.digest)
        except (ValueError, KeyError, TypeError) as error:
            raise RpcError(
                SANDBOX_ERROR_CODES["load_error"], str(error), {"kind": "load_error"}
            ) from None
        package_dir = await self._dependencies_here(fid, code.runtime, code.dependencies)
        actor = ActorSource(
            name=script_filename(record.name, code.runtime).rsplit(".", 1)[0],
            namespace=f"function.{record.digest[:32]}",
            language=code.runtime,
            source=code.code,
            filename=script_filename(record.name, code.runtime),
            package_dirs=(package_dir,) if package_dir else (),
        )
        return _Loaded(actor, package_dir)

    async def _dependencies_here(self, fid: str, language: Language, pairs: Pairs) -> str | None:
        if not pairs:
            return None
        try:
            async with asyncio.timeout(self._call_timeout):
                folder = await self._installer.ensure(language, pairs)
        except TimeoutError:
            raise RpcError(
                SANDBOX_ERROR_CODES["unavailable"],
                f"the dependencies of function {fid} are still installing on this node "
                "(the install goes on): call again shortly",
                {"kind": "unavailable", "function_id": fid},
            ) from None
        except InstallError as error:
            raise RpcError(
                SANDBOX_ERROR_CODES["load_error"],
                f"the dependencies of function {fid} could not be installed on this node: {error}",
                {"kind": "load_error", "function_id": fid},
            ) from None
        except CallError as error:
            raise _store_failed(error) from None
        self._installer.mark_used(folder)
        return folder

    # -- background -----------------------------------------------------------------------

    def _background(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _refresh_count(self) -> None:
        with contextlib.suppress(CallError):
            self._metrics.deployed.set(await self._store.count())

    async def _sweep_forever(self) -> None:
        interval = min(max(self._settings.idle_timeout / 4, 0.05), 60.0)
        while True:
            await self._refresh_count()
            self.sweep(time.monotonic() - self._settings.idle_timeout)
            await asyncio.sleep(interval)

    def sweep(self, used_before: float) -> None:
        """Forget code unused since ``used_before`` (monotonic) and prune the cache."""
        for key, entry in list(self._local.items()):
            if entry.last_used < used_before:
                del self._local[key]
        self._metrics.loaded.set(len(self._local))
        keep = set()
        for entry in self._local.values():
            if entry.package_dir is not None:
                self._installer.mark_used(entry.package_dir)
                keep.add(str(_parent(entry.package_dir)))
        with contextlib.suppress(OSError):
            self._installer.prune(keep, self._settings.idle_timeout)


def _store_failed(error: CallError) -> RpcError:
    """The JSON-RPC error for a call whose function store failed."""
    return RpcError(SANDBOX_ERROR_CODES["state_error"], error.message, {"kind": "state_error"})


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


class FunctionBinding:
    """Resolves the calls of one connection in arrival order.

    Each call awaits the store before it reaches the pool; the pool keeps calls of an
    actor in FIFO order only if they reach it in the order they arrived. So a call's
    lookup starts when the previous call's lookup has finished, and the call enters
    the pool's queue before the next lookup resumes.
    """

    def __init__(self, service: FunctionService, function_id: str) -> None:
        self._service = service
        self.function_id = function_id
        self._previous: asyncio.Future[None] | None = None

    async def resolve(self) -> tuple[ActorSource, float]:
        previous = self._previous
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._previous = mine
        try:
            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            return await self._service.resolve(self.function_id)
        finally:
            if not mine.done():
                mine.set_result(None)
