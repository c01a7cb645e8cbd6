"""What of the host each language's bubblewrap sandbox sees, asked of the interpreters.

A sandbox's root holds, read-only, only what its interpreter needs, found on the host it
runs on rather than assumed from one machine's layout:

- the directories of the shared libraries the binary links (``ldd``; they hold only
  package-managed public libraries, and extension modules ``dlopen`` siblings there);
- Python: the stdlib folders on its own ``sys.path`` with ``-I -S``;
- Node.js: the folders its build loads builtins from. Debian's ``nodejs`` keeps some of
  them (cjs-module-lexer, undici, acorn...) outside the binary, under ``node_prefix`` +
  ``node_relative_path`` of ``process.config.variables``
  (``/usr/lib/x86_64-linux-gnu/nodejs`` and ``/usr/share/nodejs``), and aborts at start
  ("Cannot load externalized builtin") without them; upstream's
  ``--shared-builtin-*-path`` options name single files instead. A self-contained build
  (nodejs.org, NodeSource) needs none.

Each question starts the interpreter, so answers are cached per process and binary.
Whether the result really suffices is checked by starting one sandbox per language
(``BubblewrapBackend.start``).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

from ...vocabulary import Language

_LIB_PATH = re.compile(r"(/\S+) \(0x")


def _library_dirs(binary: str) -> set[str]:
    """Directories holding the shared libraries ``binary`` links (as named and resolved)."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=20)
    dirs: set[str] = set()
    for match in _LIB_PATH.finditer(result.stdout):
        path = match.group(1)
        dirs.add(os.path.realpath(os.path.dirname(path)))
        dirs.add(os.path.dirname(os.path.realpath(path)))
    return dirs


def _python_dirs(binary: str) -> set[str]:
    """The stdlib directories this interpreter searches with ``-I -S``."""
    probe = "import sys; print('\\n'.join(p for p in sys.path if p))"
    result = subprocess.run(
        [binary, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=20, check=True
    )
    return {os.path.realpath(p) for p in result.stdout.split() if os.path.isdir(p)}


# Prints the folders Node's build loads builtins from, one a line (see the docstring).
_NODE_PROBE = r"""
const path = require("path");
const v = process.config.variables || {};
const found = [];
if (v.node_prefix && v.node_relative_path)
  for (const rel of String(v.node_relative_path).split(":"))
    if (rel) found.push(path.resolve(v.node_prefix, rel));
for (const [key, value] of Object.entries(v))
  if (key.startsWith("node_shared_builtin_") && key.endsWith("_path")
      && typeof value === "string" && path.isAbsolute(value))
    found.push(path.dirname(value));
console.log(found.join("\n"));
"""


def _node_dirs(binary: str) -> set[str]:
    """The folders this Node build loads its own builtins from (empty for most builds)."""
    result = subprocess.run(
        [binary, "-e", _NODE_PROBE],
        capture_output=True, text=True, timeout=20, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return {os.path.realpath(p) for p in result.stdout.split() if os.path.isdir(p)}


def missing_folders(paths: list[str]) -> list[str]:
    """The ones of ``paths`` that are not folders on this host."""
    return [path for path in paths if not os.path.isdir(path)]


@functools.lru_cache(maxsize=16)
def _interpreter_dirs(language: Language, binary: str, mtime_ns: int, inode: int) -> frozenset[str]:
    """What ``binary`` needs to run: its libraries' folders and its own search folders.

    Asked of the interpreter once per process and binary (``mtime_ns`` and ``inode`` make
    a replaced binary ask again): each question starts the interpreter, which takes
    seconds under emulation, and tests start many backends.
    """
    dirs = _library_dirs(binary)
    dirs |= _python_dirs(binary) if language == "python" else _node_dirs(binary)
    return frozenset(dirs)


class HostLayout:
    """What of the host each language's sandbox sees, resolved once at start."""

    def __init__(self, runner_dir: str) -> None:
        self.runner_dir = runner_dir
        self.binaries: dict[Language, str] = {}
        self.dirs: dict[Language, list[str]] = {}
        self.aliases: dict[Language, list[tuple[str, str]]] = {}
        self.symlinks = [
            (os.readlink(f"/{name}"), f"/{name}")
            for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
            if os.path.islink(f"/{name}")
        ]

    def add(self, language: Language, binary: str) -> None:
        """Resolve what ``binary`` (the ``language`` interpreter) needs.

        Raises:
            OSError: the binary cannot be read or run.
            subprocess.SubprocessError: the interpreter failed when asked (``stderr`` says).
        """
        real = os.path.realpath(binary)
        if real != binary:  # keep the usual name (/usr/bin/python3) working inside
            self.aliases.setdefault(language, []).append((real, binary))
        stat = os.stat(real)
        dirs = set(_interpreter_dirs(language, real, stat.st_mtime_ns, stat.st_ino))
        self.binaries[language] = real
        # Parents first, and no directory bound twice under one already bound.
        ordered = sorted(dirs)
        self.dirs[language] = [
            d for d in ordered if not any(d.startswith(o + "/") for o in ordered if o != d)
        ]
