"""Reflow MicroSandbox Python runner: runs inside the sandbox, stdlib only.

Started as ``python3 -I -S python_runner.py [--fds IN,OUT] [--end-marker]``. It speaks
the length-prefixed JSON frames of ``reflow_microsandbox.sandbox.frames`` (documented
there) on a private channel, loads one actor script, then runs its ``process``
function once per ``call`` frame. It imports nothing heavy at start-up (no asyncio,
no threads): a coroutine is driven by hand while it only awaits ``context``
methods, and an event loop is made only for scripts that use asyncio.

What the script writes to ``sys.stdout``/``sys.stderr`` becomes ``log`` frames; raw
writes to fd 1/2 (``os.write``, child processes) never reach the protocol channel.
With ``--end-marker`` the runner writes ``\\x00msb-end:<call id>\\x00\\n`` to fd 2 right
before each call's final frame, so a backend whose fd 2 stream is not ordered with the
channel (Docker) can tell when it has received everything the call wrote raw.
"""

from __future__ import annotations

import _json
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator
    from typing import Any

_RUNNER_FILE = __file__
_MAX_MESSAGE = 64 * 1024 * 1024


# JSON through the C accelerator directly: `import json` pulls in `re` and `enum`,
# which would double the interpreter's start-up time.
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reject_type(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)
    memo: dict[str, Any] = {}


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]


def dumps(value: Any) -> str:
    """Strict, compact, ASCII JSON (ValueError for NaN/Infinity, TypeError for others)."""
    encode = _json.make_encoder(
        {}, _reject_type, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return "".join(encode(value, 0))


def loads(text: str) -> Any:
    """Parse compact JSON as the control plane sends it."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("trailing data after JSON")
    return value


def open_transport(argv: list[str]) -> tuple[int, int]:
    """Return the (read fd, write fd) of the protocol channel; fds 0-2 become harmless.

    ``--fds IN,OUT`` uses descriptors the launcher prepared (fd 1/2 then already lead
    to a capture stream). Without it the channel is stdin/stdout: they are moved to
    private descriptors, fd 0 reads /dev/null and fd 1 is pointed at fd 2 so raw
    writes land in the stderr stream the backend reads as logs.
    """
    if "--fds" in argv:
        read_fd, write_fd = (int(part) for part in argv[argv.index("--fds") + 1].split(","))
    else:
        read_fd, write_fd = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
    os.set_inheritable(read_fd, False)
    os.set_inheritable(write_fd, False)
    return read_fd, write_fd


class Channel:
    """Blocking frame I/O over the protocol descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        data = dumps(message).encode("ascii")
        view = memoryview(len(data).to_bytes(4, "big") + data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = os.read(self.read_fd, max(65536, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of stream."""
        if not self._fill(4):
            return None
        size = int.from_bytes(self._buffer[:4], "big")
        if size > _MAX_MESSAGE or not self._fill(4 + size):
            return None
        body = bytes(self._buffer[4 : 4 + size])
        del self._buffer[: 4 + size]
        message: dict[str, Any] = loads(body.decode("utf-8"))
        return message


class LogStream:
    """A text stream for sys.stdout/sys.stderr that turns each line into a log frame."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, runner: Runner, level: str, fd: int) -> None:
        self._runner = runner
        self._level = level
        self._fd = fd
        self._pending = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            self._runner.log(self._level, "\n".join(lines))
        if len(self._pending) >= 65536:  # text without line ends is output all the same
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._runner.log(self._level, pending)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd


class StateError(Exception):
    """The control plane's state store refused or failed a request."""


class ScriptError(Exception):
    """The script broke the API contract (e.g. output that is not strict JSON)."""


class Done:
    """An awaitable that is already resolved: context methods act at once, ``await`` is optional."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        yield from ()
        return self.value


def strict_json(value: Any, what: str) -> str:
    """Encode ``value`` as strict JSON or raise ScriptError saying what was wrong."""
    try:
        return dumps(value)
    except ValueError as error:
        if "Out of range float" not in str(error):
            raise ScriptError(f"{what} is not JSON-serializable: {error}") from None
        raise ScriptError(
            f"{what} is not strict JSON: NaN and Infinity cannot be sent "
            "(use null or a string instead)"
        ) from None
    except (TypeError, RecursionError) as error:
        raise ScriptError(f"{what} is not JSON-serializable: {error}") from None


class Context:
    """What ``process(context)`` receives."""

    def __init__(self, runner: Runner, data: dict[str, Any]) -> None:
        self._runner = runner
        self.payload = data.get("payload") or {}
        self.config = data.get("config") or {}
        self.actor_id = data.get("actor_id", "")
        self.namespace = data.get("namespace", "default")
        self.timestamp = data.get("timestamp", 0)

    def get_input(self, port: str, default: Any = None) -> Any:
        return self.payload.get(port, default)

    def send_output(self, port: str, value: Any) -> Done:
        strict_json(value, f"send_output({port!r}) value")
        self._runner.channel.send({"type": "output", "port": str(port), "data": value})
        return Done(None)

    def get_state(self, key: str, default: Any = None) -> Done:
        return Done(self._runner.state("get", key, default=default))

    def set_state(self, key: str, value: Any) -> Done:
        strict_json(value, f"set_state({key!r}) value")
        return Done(self._runner.state("set", key, value=value))

    def delete_state(self, key: str) -> Done:
        return Done(self._runner.state("delete", key))

    def increment_state(self, key: str, by: int | float = 1) -> Done:
        return Done(self._runner.state("increment", key, by=by))

    def log(self, *args: object, level: str = "info") -> None:
        self._runner.log(str(level), " ".join(str(arg) for arg in args))


class ActorDecorator:
    """``@actor``, ``@actor({...})``, ``@actor(name=...)``: records metadata and the function."""

    def __init__(self) -> None:
        self.function: Callable[..., Any] | None = None
        self.metadata: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return self._register(args[0], {})
        metadata: dict[str, Any] = {}
        if args:
            if len(args) != 1 or not isinstance(args[0], dict):
                raise TypeError("@actor takes a metadata dict or keyword arguments")
            metadata.update(args[0])
        metadata.update(kwargs)
        return lambda function: self._register(function, metadata)

    def _register(
        self, function: Callable[..., Any], metadata: dict[str, Any]
    ) -> Callable[..., Any]:
        self.function = function
        self.metadata = dict(metadata)
        if "component" not in self.metadata:
            self.metadata["component"] = self.metadata.get("name") or function.__name__
        return function


def trimmed_traceback(error: BaseException, filename: str, source: str) -> str:
    """The traceback of ``error`` from the first frame in the script, runner frames removed."""
    import linecache
    import traceback

    # The script's file is not inside the sandbox: give linecache its text.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    frames = traceback.extract_tb(error.__traceback__)
    start = next((i for i, f in enumerate(frames) if f.filename == filename), len(frames))
    kept = [f for f in frames[start:] if f.filename != _RUNNER_FILE]
    lines = ["Traceback (most recent call last):\n"] if kept else []
    lines += traceback.format_list(kept)
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)


class Runner:
    """The load-once, call-many loop."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.function: Callable[..., Any] | None = None
        self.filename = "<actor>"
        self.source = ""
        self.uses_asyncio = False
        self.loop: Any = None
        self.call_id: int | None = None
        self.marker_fd: int | None = None
        self._state_seq = 0

    def log(self, level: str, message: str) -> None:
        self.channel.send({"type": "log", "level": level, "message": message})

    def state(self, op: str, key: str, **fields: Any) -> Any:
        if self.call_id is None:
            raise StateError("state is only available while process() runs")
        self._state_seq += 1
        request = {"type": "state", "id": self._state_seq, "op": op, "key": str(key)}
        for name, value in fields.items():
            request[name] = value
        self.channel.send(request)
        while True:
            answer = self.channel.receive()
            if answer is None:
                raise SystemExit(0)
            if answer.get("type") == "state_result" and answer.get("id") == self._state_seq:
                break
        if not answer.get("ok"):
            raise StateError(answer.get("error") or "state request failed")
        return answer.get("value")

    def end_call(self, call_id: Any) -> None:
        """Flush what the script wrote to its streams; with --end-marker, mark fd 2."""
        sys.stdout.flush()
        sys.stderr.flush()
        for stream in (sys.__stdout__, sys.__stderr__):  # raw, buffered fd 1/2 writes
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a closed or broken fd 1/2 must not fail the call
                pass
        if self.marker_fd is not None and type(call_id) is int:
            write_marker(self.marker_fd, b"\x00msb-end:%d\x00\n" % call_id)

    def error(self, kind: str, error: BaseException, call_id: int | None = None) -> None:
        if isinstance(error, MemoryError):
            kind, trace = "memory", "MemoryError: the sandbox memory limit was reached\n"
        else:
            try:
                trace = trimmed_traceback(error, self.filename, self.source)
            except Exception:  # a broken traceback must not kill the runner
                trace = f"{type(error).__name__}: {error}\n"
        self.channel.send(
            {
                "type": "error",
                "id": call_id,
                "kind": kind,
                "error_type": type(error).__name__,
                "message": str(error),
                "traceback": trace,
            }
        )

    def load(self, message: dict[str, Any]) -> None:
        self.filename = message.get("filename") or "<actor>"
        source = self.source = message["source"]
        decorator = ActorDecorator()
        namespace = {"__name__": "__actor__", "__file__": self.filename, "actor": decorator}
        try:
            code = compile(source, self.filename, "exec")
            exec(code, namespace)
        except BaseException as error:  # any failure is the script's
            self.error("load_error", error)
            return
        function = decorator.function or namespace.get("process")
        if not callable(function):
            self.channel.send(
                {
                    "type": "error",
                    "id": None,
                    "kind": "load_error",
                    "error_type": "LoadError",
                    "message": "the script defines no @actor function and no process(context)",
                    "traceback": "",
                }
            )
            return
        self.function = function
        self.uses_asyncio = "asyncio" in source or "asyncio" in sys.modules
        metadata = decorator.metadata or {"component": getattr(function, "__name__", "process")}
        try:
            strict_json(metadata, "actor metadata")
        except ScriptError:
            metadata = {"component": str(metadata.get("component", "process"))}
        self.channel.send({"type": "loaded", "metadata": metadata})

    def run_coroutine(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        if self.uses_asyncio:
            import asyncio

            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self.loop)
            return self.loop.run_until_complete(coroutine)
        try:
            coroutine.send(None)
        except StopIteration as stop:
            return stop.value
        coroutine.close()
        raise ScriptError(
            "process() awaited something other than context methods: "
            "import asyncio at the top of the script to use an event loop"
        )

    def call(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        context = Context(self, message.get("context") or {})
        self.call_id = call_id
        try:
            assert self.function is not None
            value = self.function(context)
            if hasattr(value, "__await__") and hasattr(value, "send"):
                value = self.run_coroutine(value)
            elif isinstance(value, Done):
                value = value.value
            if value is None:
                outputs = {}
            elif isinstance(value, dict):
                outputs = value
            else:
                outputs = {"output": value}
            strict_json(outputs, "the returned value")
            self.end_call(call_id)
            self.channel.send({"type": "result", "id": call_id, "outputs": outputs})
        except BaseException as error:  # report everything, keep serving
            if isinstance(error, KeyboardInterrupt):
                raise
            self.end_call(call_id)
            kind = "state_error" if isinstance(error, StateError) else "script_error"
            self.error(kind, error, call_id)
        finally:
            self.call_id = None

    def serve(self) -> None:
        self.channel.send({"type": "ready", "language": "python", "pid": os.getpid()})
        while True:
            message = self.channel.receive()
            if message is None:
                return
            kind = message.get("type")
            if kind == "call" and self.function is not None:
                self.call(message)
            elif kind == "load" and self.function is None:
                self.load(message)
            elif kind == "call":
                self.end_call(message.get("id"))
                self.channel.send(
                    {
                        "type": "error",
                        "id": message.get("id"),
                        "kind": "load_error",
                        "error_type": "LoadError",
                        "message": "no actor is loaded in this sandbox",
                        "traceback": "",
                    }
                )


def write_marker(fd: int, marker: bytes) -> None:
    """Write an end-of-call marker; give up quietly if fd 2 is gone (bounded retry if full)."""
    for _ in range(2000):
        try:
            os.write(fd, marker)  # shorter than PIPE_BUF: written whole or not at all
            return
        except BlockingIOError:  # the script made the pipe non-blocking and filled it
            import time

            time.sleep(0.001)
        except OSError:
            return


def main() -> None:
    channel = Channel(*open_transport(sys.argv))
    extra = os.environ.get("REFLOW_PACKAGE_DIRS")
    if extra:
        sys.path.extend(part for part in extra.split(":") if part)
    runner = Runner(channel)
    if "--end-marker" in sys.argv:
        # A private copy of fd 2: the script may close or replace its own fd 2.
        runner.marker_fd = os.dup(2)
    sys.stdout = LogStream(runner, "info", 1)
    sys.stderr = LogStream(runner, "error", 2)
    try:
        runner.serve()
    finally:
        # End of stream, or the control plane went away: leave without cleanup.
        os._exit(0)


if __name__ == "__main__":
    main()
