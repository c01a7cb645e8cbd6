"""Which script is actor X: discovery from the script folders, ``load``, ``unload``.

Actors are keyed by ``(namespace, name)``. The namespace is the script's sub-folder
path inside its script folder, dotted (``a/b/x.py`` -> ``a.b``), as Reflow derives
it, and ``default`` at the root; the name comes from the script's metadata (see
:mod:`.actor_metadata`). Two actors with one name in one namespace are an error,
never a silent overwrite. ``load`` reads files only inside a configured folder,
after resolving symlinks.

Names for ``list``: an actor of the ``default`` namespace is listed as ``name``,
any other as ``namespace.name``; :meth:`ActorRegistry.resolve` accepts both forms.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .actor_metadata import MetadataError, NotAnActor, extract, valid_name
from .errors import RegistryError
from .vocabulary import JSON, ActorSource, Language

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
MAX_SCRIPT_BYTES = 4 * 1024 * 1024

_EXTENSIONS: dict[str, Language] = {".py": "python", ".js": "nodejs"}
_LANGUAGE_ALIASES: dict[str, Language] = {
    "python": "python",
    "py": "python",
    "python3": "python",
    "nodejs": "nodejs",
    "node": "nodejs",
    "javascript": "nodejs",
    "js": "nodejs",
}
_SKIPPED_DIRS = {"__pycache__", "node_modules"}


def language_named(name: object) -> Language | None:
    """The language a ``load`` request's ``language`` names (any of
    :data:`LANGUAGE_NAMES`, case-insensitive), or None."""
    return _LANGUAGE_ALIASES.get(name.lower()) if isinstance(name, str) else None


LANGUAGE_NAMES = ", ".join(_LANGUAGE_ALIASES)
"""Every language name ``load`` accepts, for error messages."""


@dataclass(frozen=True)
class ActorInfo:
    """A registered actor: what to load into a sandbox, its metadata, its file."""

    source: ActorSource
    metadata: dict[str, JSON] = field(hash=False)
    path: str | None  # the real path of its script; None when loaded inline

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def namespace(self) -> str:
        return self.source.namespace

    @property
    def listed_name(self) -> str:
        """How ``list`` shows it: ``name``, or ``namespace.name`` outside ``default``."""
        if self.namespace == DEFAULT_NAMESPACE:
            return self.name
        return f"{self.namespace}.{self.name}"

    @property
    def origin(self) -> str:
        return self.path or f"inline source {self.source.filename}"


class ActorRegistry:
    """The actors this server can run."""

    def __init__(self, folders: list[str], *, allow_inline: bool) -> None:
        self.folders = [os.path.realpath(folder) for folder in folders]
        self.allow_inline = allow_inline
        self.problems: list[str] = []
        """Scripts that discovery skipped, and why (for the server's log)."""
        self._actors: dict[tuple[str, str], ActorInfo] = {}

    # -- discovery -----------------------------------------------------------------

    def discover(self) -> None:
        """Scan every folder (``*.py``, ``*.js``, recursive) and register what is found.

        Files that declare no actor are skipped; broken ones are skipped and noted in
        :attr:`problems`. Two actors with the same name in one namespace raise
        :class:`RegistryError` naming both files.
        """
        found: dict[tuple[str, str], ActorInfo] = {}
        self.problems = []
        for folder in self.folders:
            if not os.path.isdir(folder):
                self.problems.append(f"script folder {folder} does not exist")
                continue
            for path in _script_files(folder):
                try:
                    info = self._read_actor(path, folder)
                except NotAnActor:
                    continue
                except (MetadataError, RegistryError, OSError) as error:
                    self.problems.append(str(error))
                    continue
                key = (info.namespace, info.name)
                if key in found:
                    raise RegistryError(_duplicate(info, found[key]))
                found[key] = info
        for problem in self.problems:
            log.warning("actor discovery: %s", problem)
        self._actors = found

    # -- lookup ----------------------------------------------------------------------

    def resolve(self, actor_id: str, namespace: str | None = None) -> ActorInfo:
        """The actor ``actor_id`` of ``namespace`` (or ``default``).

        When that exact pair is not registered, an actor of that name in any
        namespace is used if there is exactly one, and ``ns.name`` is understood.
        """
        info = self._find(actor_id, namespace)
        if info is not None:
            return info
        candidates = [i for i in self._actors.values() if i.name == actor_id]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            spaces = ", ".join(sorted(i.namespace for i in candidates))
            raise RegistryError(
                f"actor {actor_id!r} exists in several namespaces ({spaces}): give the namespace"
            )
        where = f" in namespace {namespace!r}" if namespace else ""
        known = self.names()
        shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise RegistryError(f"unknown actor {actor_id!r}{where} (known: {shown or 'none'})")

    def names(self) -> list[str]:
        """Every actor's listed name, sorted (see :attr:`ActorInfo.listed_name`)."""
        return sorted(info.listed_name for info in self._actors.values())

    def all(self) -> list[ActorInfo]:
        return sorted(self._actors.values(), key=lambda info: (info.namespace, info.name))

    # -- load / unload -------------------------------------------------------------

    def load_file(self, file_path: str) -> ActorInfo:
        """Register the script at ``file_path`` (relative to a script folder, or absolute).

        The path must resolve, symlinks followed, inside a configured folder. An actor
        of the same name is replaced only if it came from this same file.
        """
        if not isinstance(file_path, str) or not file_path.strip() or "\0" in file_path:
            raise RegistryError("file_path must be a non-empty path string")
        path, folder = self._locate(file_path)
        try:
            info = self._read_actor(path, folder)
        except NotAnActor as error:
            raise RegistryError(str(error)) from None
        key = (info.namespace, info.name)
        existing = self._actors.get(key)
        if existing is not None and existing.path != info.path:
            raise RegistryError(_duplicate(info, existing))
        self._actors[key] = info
        return info

    def load_inline(
        self, source: str, language: str, name: str, namespace: str = DEFAULT_NAMESPACE
    ) -> ActorInfo:
        """Register an actor from source text (only when the config allows inline code)."""
        if not self.allow_inline:
            raise RegistryError(
                "inline actor source is disabled on this server "
                "(scripts.allow_inline: false); load a file_path from a script folder"
            )
        if not isinstance(source, str) or not isinstance(name, str):
            raise RegistryError("source and name must be strings")
        lang = language_named(language)
        if lang is None:
            raise RegistryError(f"unsupported language {language!r} (allowed: {LANGUAGE_NAMES})")
        if not valid_name(name):
            raise RegistryError(f"invalid actor name {name!r}")
        if not isinstance(namespace, str) or not all(
            valid_name(part) for part in namespace.split(".")
        ):
            raise RegistryError(f"invalid namespace {namespace!r}")
        if len(source.encode("utf-8", errors="replace")) > MAX_SCRIPT_BYTES:
            raise RegistryError(f"the source is larger than {MAX_SCRIPT_BYTES} bytes")
        filename = f"<inline:{name}>"
        try:
            extracted = extract(source, lang, name, filename)
        except MetadataError as error:
            raise RegistryError(str(error)) from None
        metadata = {**extracted.metadata, "component": name}
        info = ActorInfo(
            source=ActorSource(
                name=name, namespace=namespace, language=lang, source=source, filename=filename
            ),
            metadata=metadata,
            path=None,
        )
        existing = self._actors.get((namespace, name))
        if existing is not None and existing.path is not None:
            raise RegistryError(_duplicate(info, existing))
        self._actors[(namespace, name)] = info
        return info

    def unload(self, name: str, namespace: str | None = None) -> bool:
        """Forget an actor; False if there was none by that name."""
        info = self._find(name, namespace)
        if info is None:
            candidates = [i for i in self._actors.values() if i.name == name]
            if namespace is not None or len(candidates) != 1:
                return False
            info = candidates[0]
        del self._actors[(info.namespace, info.name)]
        return True

    # -- internals -------------------------------------------------------------------

    def _find(self, actor_id: str, namespace: str | None) -> ActorInfo | None:
        """Exact lookup: ``(namespace or default, actor_id)``, then ``ns.name``."""
        info = self._actors.get((namespace or DEFAULT_NAMESPACE, actor_id))
        if info is None and "." in actor_id:
            ns, _, name = actor_id.rpartition(".")
            info = self._actors.get((ns, name))
        return info

    def _locate(self, file_path: str) -> tuple[str, str]:
        """The real path of ``file_path`` and the folder holding it; RegistryError."""
        outside = False
        candidates: list[tuple[str, str | None]]
        if os.path.isabs(file_path):
            candidates = [(os.path.realpath(file_path), None)]
        else:
            candidates = [
                (os.path.realpath(os.path.join(folder, file_path)), folder)
                for folder in self.folders
            ]
        for real, base in candidates:
            folder = _containing_folder(real, self.folders if base is None else [base])
            if folder is None:
                outside = True
                continue
            if os.path.isfile(real):
                return real, folder
        if outside:
            raise RegistryError(
                f"file_path {file_path!r} is outside the script folders (symlinks are "
                "followed): only scripts inside a configured folder can be loaded"
            )
        raise RegistryError(f"no script {file_path!r} in the script folders")

    def _read_actor(self, path: str, folder: str) -> ActorInfo:
        real = os.path.realpath(path)
        if _containing_folder(real, [folder]) is None:
            raise RegistryError(f"{path} links outside its script folder {folder}")
        suffix = Path(real).suffix.lower()
        language = _EXTENSIONS.get(suffix)
        if language is None:
            raise RegistryError(f"{path}: scripts are .py (Python) or .js (JavaScript) files")
        source = _read_text(real)
        relative = Path(os.path.relpath(real, folder))
        parts = relative.parent.parts
        namespace = ".".join(parts) if parts else DEFAULT_NAMESPACE
        if parts and not all(valid_name(part) for part in parts):
            raise RegistryError(f"{path}: its folder cannot name a namespace")
        try:
            # Messages name the file as its folder does (they may reach clients).
            extracted = extract(source, language, relative.stem, relative.as_posix())
        except NotAnActor:
            raise
        except MetadataError as error:
            raise RegistryError(str(error)) from None
        return ActorInfo(
            source=ActorSource(
                name=extracted.name,
                namespace=namespace,
                language=language,
                source=source,
                filename=relative.as_posix(),
            ),
            metadata=extracted.metadata,
            path=real,
        )


def _script_files(folder: str) -> list[str]:
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        files.extend(
            os.path.join(root, name)
            for name in sorted(names)
            if not name.startswith(".") and Path(name).suffix.lower() in _EXTENSIONS
        )
    return files


def _containing_folder(real_path: str, folders: list[str]) -> str | None:
    for folder in folders:
        if real_path.startswith(folder.rstrip(os.sep) + os.sep):
            return folder
    return None


def _read_text(path: str) -> str:
    """Read a script without following a symlink swapped in at the last moment."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise RegistryError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise RegistryError(f"{path} is larger than {MAX_SCRIPT_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryError(f"{path} is not UTF-8 text") from None


def _duplicate(new: ActorInfo, existing: ActorInfo) -> str:
    return (
        f"two actors named {new.name!r} in namespace {new.namespace!r}: "
        f"{existing.origin} and {new.origin}"
    )
