"""Reflow MicroSandbox Python runner: runs inside the sandbox, stdlib only.

Started as ``python3 -I -S python_runner.py [--fds IN,OUT] [--end-marker]``. It speaks
the length-prefixed JSON frames of ``reflow_microsandbox.sandbox.frames`` (documented
there) on a private channel, loads one actor script, then runs its ``process``
function once per ``call`` frame. It imports nothing heavy at start-up (no asyncio,
no threading): a coroutine is driven by hand while it only awaits ``context``
methods, and an event loop is made only for scripts that use asyncio.

Every frame of a call carries the call's id. The code that writes it decides which
call that is: ``context`` methods use the call their context was made for, and
``print`` / ``sys.stdout`` / ``sys.stderr`` use the call of the code that runs, kept in
a context variable that asyncio tasks inherit and that new threads inherit too (the
runner starts threads in a copy of their creator's context). So a thread or task left
running by one call is still tagged with that call, and the control plane drops what it
writes once the call has answered instead of showing it to the next caller.

What the script writes to ``sys.stdout``/``sys.stderr`` becomes ``log`` frames, a line
at a time, or every :data:`LOG_CHUNK` characters for text without newlines; raw writes
to fd 1/2 (``os.write``, child processes) never reach the protocol channel. A forked
child is not the runner: it closes its copy of the channel, writes ``print`` output to
fd 1/2 like any process, and leaves at ``sys.exit()`` or when ``process`` returns in it.
With ``--end-marker`` the runner writes ``\\x00msb-end:<call id>\\x00\\n`` to fd 2 right
before each call's final frame, so a backend whose fd 2 stream is not ordered with the
channel (Docker) can tell when it has received everything the call wrote raw.
"""

from __future__ import annotations

import _json
import _thread
import builtins
import os
import sys
from _contextvars import ContextVar, copy_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator
    from typing import Any

# The name the runner's code carries in tracebacks (the source path, also when the
# launcher runs a compiled copy of this file).
_RUNNER_FILE = (lambda: None).__code__.co_filename
_MAX_MESSAGE = 64 * 1024 * 1024
LOG_CHUNK = 4096
"""Characters of text without a newline after which it is sent as a log line anyway."""
MAX_VALUE_DEPTH = 100
"""Deepest nesting of a value sent out (``reflow_microsandbox.jsonlimits.MAX_VALUE_DEPTH``)."""

_CALL: ContextVar[Any] = ContextVar("reflow_call", default=None)
"""The id of the call the running code belongs to (None: no call, e.g. while loading)."""


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
    """Strict, compact JSON text (ValueError for NaN/Infinity, TypeError for others);
    not ASCII-escaped, so a lone surrogate fails when the text is encoded to UTF-8."""
    encode = _json.make_encoder(
        {}, _reject_type, _json.encode_basestring, None, ":", ",", False, False, False
    )
    return "".join(encode(value, 0))


_FOLD = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether JSON text nests deeper than ``limit`` (``jsonlimits.nesting_exceeds``'s twin)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_FOLD, _NOT_BRACKETS)
    depth = 0
    while True:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return brackets.count(b"[") > limit
        depth += 1
        if depth > limit:
            return True
        brackets = shorter


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
    """Blocking frame I/O over the protocol descriptors; safe to send from any thread."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = bytearray()
        self._send_lock = _thread.allocate_lock()

    def send(self, message: dict[str, Any]) -> None:
        text = dumps(message)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in a log or error text
            data = text.encode("utf-8", "replace")
        self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        """Send one frame whose body (UTF-8 JSON) is ``data``."""
        view = memoryview(len(data).to_bytes(4, "big") + data)
        with self._send_lock:
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
    """sys.stdout/sys.stderr: each line becomes a log frame of the writing code's call.

    Text without a newline is held per call and sent once it reaches :data:`LOG_CHUNK`
    characters, or when the call ends, so every byte written is counted against the
    call's output cap as it is written.
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, runner: Runner, level: str, fd: int) -> None:
        self._runner = runner
        self._level = level
        self._fd = fd
        self._pending: dict[Any, str] = {}
        self._lock = _thread.allocate_lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        call = _CALL.get()
        with self._lock:
            pending = self._pending.pop(call, "") + text
            if "\n" in pending:
                head, _, pending = pending.rpartition("\n")
                self._runner.log(self._level, head, call)
            if len(pending) >= LOG_CHUNK:
                self._runner.log(self._level, pending, call)
            elif pending:
                self._pending[call] = pending
        return len(text)

    def flush(self) -> None:
        self.flush_calls((_CALL.get(),))

    def flush_calls(self, calls: Any = None) -> None:
        """Send the held text of ``calls`` (every call's when None)."""
        if not self._pending:
            return
        with self._lock:
            pending = self._pending
            keys = list(pending) if calls is None else [c for c in calls if c in pending]
            held = [(key, self._pending.pop(key)) for key in keys]
        for call, text in held:
            self._runner.log(self._level, text, call)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd


class RawStream:
    """sys.stdout/sys.stderr of a forked child: text goes straight to fd 1/2, as in any
    process (the sandbox's capture stream turns it into logs of the running call)."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass
        return len(text)

    def flush(self) -> None:
        pass

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


class _ChannelClosed(BaseException):
    """The control plane went away: the runner leaves (never reported to the script)."""


class Done:
    """An awaitable that is already resolved: context methods act at once, ``await`` is optional."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        yield from ()
        return self.value


def strict_json(value: Any, what: str, depth: int = MAX_VALUE_DEPTH, envelope: int = 0) -> bytes:
    """``value`` as strict JSON in UTF-8, or ScriptError saying what was wrong with it.

    ``envelope`` levels around the value (the dict of returned ports) are not counted.
    """
    try:
        text = dumps(value)
    except ValueError as error:
        if "integer string conversion" in str(error):  # over 4,300 digits
            raise ScriptError(_huge_int_message(what, value)) from None
        if "Out of range float" not in str(error):
            raise ScriptError(f"{what} is not JSON-serializable: {error}") from None
        raise ScriptError(
            f"{what} is not strict JSON: NaN and Infinity cannot be sent "
            "(use null or a string instead)"
        ) from None
    except RecursionError:
        raise ScriptError(f"{what} nests deeper than {depth} levels (the limit)") from None
    except TypeError as error:
        raise ScriptError(f"{what} is not JSON-serializable: {error}") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as error:
        point = f"U+{ord(error.object[error.start]):04X}"
        raise ScriptError(
            f"{what} holds a lone surrogate ({point}), which is not valid Unicode: UTF-8 "
            "and so JSON-RPC cannot carry it (send bytes as base64, or clean the text)"
        ) from None
    if nesting_exceeds(data, depth + envelope):
        raise ScriptError(f"{what} nests deeper than {depth} levels (the limit)")
    if len(data) > 308 and _may_hold_huge_int(text) and _huge_int_path(value) is not None:
        raise ScriptError(_huge_int_message(what, value))
    return data


_FLOAT_MAX = 1.7976931348623157e308
_huge_digits: Any = None


def _may_hold_huge_int(text: str) -> bool:
    """Whether ``text`` has 309 digits in a row (what an integer beyond a double's range
    needs). ``re`` is imported on the first long text, not at start-up."""
    global _huge_digits
    if _huge_digits is None:
        import re

        _huge_digits = re.compile("[0-9]{309}")
    return _huge_digits.search(text) is not None


def _huge_int_path(value: Any) -> str | None:
    """Where in ``value`` the first integer beyond a double's range is (dotted path,
    ``jsonlimits.non_finite_path``'s form), or None. Iterative: no depth limit."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > _FLOAT_MAX:
                return path or "value"
        elif isinstance(item, dict):
            prefix = f"{path}." if path else ""
            stack.extend((f"{prefix}{key}", sub) for key, sub in reversed(item.items()))
        elif isinstance(item, list | tuple):
            prefix = f"{path}." if path else ""
            stack.extend((f"{prefix}{i}", sub) for i, sub in reversed(list(enumerate(item))))
    return None


def _huge_int_message(what: str, value: Any) -> str:
    """The error for an integer Reflow's client cannot read (serde_json reads an integer
    beyond u64 as a double, and fails the whole frame on one beyond a double's range)."""
    where = _huge_int_path(value) or "value"
    return (
        f"{what} is not strict JSON: the integer at {where} is outside the range of a "
        "64-bit float (about 1.8e308), which Reflow cannot read: send it as a string"
    )


class Context:
    """What ``process(context)`` receives; its methods act for the call it was made for."""

    def __init__(self, runner: Runner, call_id: Any, data: dict[str, Any]) -> None:
        self._runner = runner
        self._call = call_id
        self.payload = data.get("payload") or {}
        self.config = data.get("config") or {}
        self.actor_id = data.get("actor_id", "")
        self.namespace = data.get("namespace", "default")
        self.timestamp = data.get("timestamp", 0)
        self._state_limit = data.get("state_value_limit")

    def get_input(self, port: str, default: Any = None) -> Any:
        return self.payload.get(port, default)

    def send_output(self, port: str, value: Any) -> Done:
        self._runner.check_process("send_output")
        data = strict_json(value, f"send_output({port!r}) value")
        head = dumps({"type": "output", "call": self._call, "port": str(port)})
        self._runner.channel.send_bytes(
            head[:-1].encode("utf-8", "replace") + b',"data":' + data + b"}"
        )
        return Done(None)

    def get_state(self, key: str, default: Any = None) -> Done:
        return Done(self._runner.state(self._call, "get", key, default=default))

    def set_state(self, key: str, value: Any) -> Done:
        data = strict_json(value, f"set_state({key!r}) value")
        limit = self._state_limit
        if isinstance(limit, int) and len(data) > limit:
            raise StateError(
                f"set_state({key!r}) value is {len(data)} bytes as JSON, more than the "
                f"{limit} a state value may be (the smaller of the store's limit and "
                "sandbox.max_output_bytes, less frame room)"
            )
        return Done(self._runner.state(self._call, "set", key, value=value))

    def delete_state(self, key: str) -> Done:
        return Done(self._runner.state(self._call, "delete", key))

    def increment_state(self, key: str, by: int | float = 1) -> Done:
        return Done(self._runner.state(self._call, "increment", key, by=by))

    def log(self, *args: object, level: str = "info") -> None:
        self._runner.check_process("log")
        self._runner.log(str(level), " ".join(str(arg) for arg in args), self._call)


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


class Quitter:
    """``exit()`` and ``quit()`` as the ``site`` module defines them (``-S`` skips ``site``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() to exit"

    def __call__(self, code: Any = None) -> None:
        raise SystemExit(code)


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


def children_left() -> bool:
    """Whether this process has child processes (running, or ended and not waited for)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except OSError:
        return False
    return True


class Runner:
    """The load-once, call-many loop."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.function: Callable[..., Any] | None = None
        self.filename = "<actor>"
        self.source = ""
        self.uses_asyncio = False
        self.loop: Any = None
        self.call_id: Any = None
        self.marker_fd: int | None = None
        self.in_child = False
        self._state_seq = 0
        self._state_lock = _thread.allocate_lock()

    def log(self, level: str, message: str, call: Any = None) -> None:
        if self.in_child:
            os.write(2, (message + "\n").encode("utf-8", "replace"))
            return
        self.channel.send({"type": "log", "call": call, "level": level, "message": message})

    def check_process(self, what: str) -> None:
        if self.in_child:
            raise RuntimeError(
                f"context.{what}() works in the sandbox's runner process only, not in a "
                "forked child: send results back to the parent (a pipe, a file in /tmp)"
            )

    def state(self, call: Any, op: str, key: str, **fields: Any) -> Any:
        self.check_process(f"{op}_state")
        if call is None or call != self.call_id:
            raise StateError(
                "state is only available while process() runs: this call has already ended"
            )
        with self._state_lock:
            self._state_seq += 1
            seq = self._state_seq
            request = {"type": "state", "call": call, "id": seq, "op": op, "key": str(key)}
            for name, value in fields.items():
                request[name] = value
            self.channel.send(request)
            while True:
                answer = self.channel.receive()
                if answer is None:
                    raise _ChannelClosed()
                if answer.get("type") == "state_result" and answer.get("id") == seq:
                    break
        if not answer.get("ok"):
            raise StateError(answer.get("error") or "state request failed")
        return answer.get("value")

    def end_call(self, call_id: Any) -> None:
        """Flush what the script wrote to its streams; with --end-marker, mark fd 2."""
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, LogStream):
                stream.flush_calls()
            else:
                try:  # noqa: SIM105 (contextlib would slow the start-up)
                    stream.flush()
                except Exception:  # a script's own stream must not fail the call
                    pass
        for stream in (sys.__stdout__, sys.__stderr__):  # raw, buffered fd 1/2 writes
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a closed or broken fd 1/2 must not fail the call
                pass
        if self.marker_fd is not None and type(call_id) is int:
            write_marker(self.marker_fd, b"\x00msb-end:%d\x00\n" % call_id)

    def error_frame(self, kind: str, error: BaseException, call_id: Any = None) -> dict[str, Any]:
        if isinstance(error, MemoryError):
            kind, trace = "memory", "MemoryError: the sandbox memory limit was reached\n"
        else:
            try:
                trace = trimmed_traceback(error, self.filename, self.source)
            except Exception:  # a broken traceback must not kill the runner
                trace = f"{type(error).__name__}: {error}\n"
        try:
            text = str(error)
        except Exception:  # a script's exception whose __str__ fails
            text = f"<{type(error).__name__} whose message cannot be shown>"
        return {
            "type": "error",
            "call": call_id,
            "kind": kind,
            "error_type": type(error).__name__,
            "message": text,
            "traceback": trace,
        }

    def uncaught_in_thread(self, args: Any) -> None:
        """``threading.excepthook``: report a thread's exception for the thread's call."""
        if args.exc_type is SystemExit:
            return
        frame = self.error_frame("script_error", args.exc_value or args.exc_type())
        frame["type"] = "uncaught"
        frame["fatal"] = False
        frame["call"] = _CALL.get()
        name = getattr(args.thread, "name", None)
        if name:
            frame["message"] = f"in thread {name}: {frame['message']}"
        if self.in_child:
            os.write(2, frame["traceback"].encode("utf-8", "replace"))
            return
        self.channel.send(frame)

    def load(self, message: dict[str, Any]) -> None:
        self.filename = message.get("filename") or "<actor>"
        source = self.source = message["source"]
        decorator = ActorDecorator()
        namespace = {"__name__": "__actor__", "__file__": self.filename, "actor": decorator}
        try:
            code = compile(source, self.filename, "exec")
            exec(code, namespace)
        except BaseException as error:  # any failure is the script's
            self.channel.send(self.error_frame("load_error", error))
            return
        function = decorator.function or namespace.get("process")
        if not callable(function):
            self.channel.send(
                {
                    "type": "error",
                    "call": None,
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
        call_id: Any = message.get("call")
        context = Context(self, call_id, message.get("context") or {})
        self.call_id = call_id
        token = _CALL.set(call_id)
        try:
            assert self.function is not None
            value = self.function(context)
            if hasattr(value, "__await__") and hasattr(value, "send"):
                value = self.run_coroutine(value)
            elif isinstance(value, Done):
                value = value.value
            if self.in_child:
                self.leave_child(None)
            if value is None:
                outputs = {}
            elif isinstance(value, dict):
                outputs = value
            else:
                outputs = {"output": value}
            data = strict_json(outputs, "the returned value", MAX_VALUE_DEPTH, 1)
            self.end_call(call_id)
            lingering = ',"lingering":true' if children_left() else ""
            self.channel.send_bytes(
                b'{"type":"result","call":%d%s,"outputs":%s}'
                % (int(call_id), lingering.encode(), data)
            )
        except _ChannelClosed:
            raise
        except BaseException as error:  # report everything (exit(), ^C too), keep serving
            if self.in_child:
                self.leave_child(error)
            self.end_call(call_id)
            kind = "state_error" if isinstance(error, StateError) else "script_error"
            frame = self.error_frame(kind, error, call_id)
            if children_left():
                frame["lingering"] = True
            self.channel.send(frame)
        finally:
            _CALL.reset(token)
            self.call_id = None

    def forked(self) -> None:
        """``os.register_at_fork(after_in_child=...)``: this process is not the runner."""
        self.in_child = True
        for fd in {self.channel.read_fd, self.channel.write_fd}:
            try:  # noqa: SIM105 (contextlib would slow the start-up)
                os.close(fd)
            except OSError:
                pass
        sys.stdout = RawStream(1)
        sys.stderr = RawStream(2)

    def leave_child(self, error: BaseException | None) -> None:
        """A forked child got back to the runner's call: it ends as a Python program would."""
        code = 0
        if isinstance(error, SystemExit):
            if error.code is None:
                code = 0
            elif isinstance(error.code, int):
                code = error.code
            else:
                sys.stderr.write(f"{error.code}\n")
                code = 1
        elif error is not None:
            try:  # noqa: SIM105 (contextlib would slow the start-up)
                sys.stderr.write(trimmed_traceback(error, self.filename, self.source))
            except Exception:
                pass
            code = 1
        os._exit(code & 0xFF)

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
                self.end_call(message.get("call"))
                self.channel.send(
                    {
                        "type": "error",
                        "call": message.get("call"),
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


def _run_in(context: Any, function: Any, args: Any, kwargs: Any) -> Any:
    return context.run(function, *args, **kwargs)


def install_hooks(runner: Runner) -> None:
    """Threads start in a copy of their creator's context (so they keep its call), thread
    exceptions are reported for that call, forked children stop being the runner, and
    ``exit()`` / ``quit()`` exist. Done before the script can import ``threading``."""
    start = _thread.start_new_thread

    def start_in_context(function: Any, args: Any, kwargs: Any = None) -> Any:
        return start(_run_in, (copy_context(), function, args, kwargs or {}))

    _thread.start_new_thread = start_in_context
    _thread.start_new = start_in_context
    _thread._excepthook = runner.uncaught_in_thread
    os.register_at_fork(after_in_child=runner.forked)
    setattr(builtins, "exit", Quitter("exit"))  # noqa: B010 (typeshed types site's Quitter)
    setattr(builtins, "quit", Quitter("quit"))  # noqa: B010


def main() -> None:
    channel = Channel(*open_transport(sys.argv))
    extra = os.environ.get("REFLOW_PACKAGE_DIRS")
    if extra:
        sys.path.extend(part for part in extra.split(":") if part)
    runner = Runner(channel)
    if "--end-marker" in sys.argv:
        # A private copy of fd 2: the script may close or replace its own fd 2.
        runner.marker_fd = os.dup(2)
    install_hooks(runner)
    sys.stdout = LogStream(runner, "info", 1)
    sys.stderr = LogStream(runner, "error", 2)
    try:
        runner.serve()
    finally:
        # End of stream, or the control plane went away: leave without cleanup.
        os._exit(0)


if __name__ == "__main__":
    main()
