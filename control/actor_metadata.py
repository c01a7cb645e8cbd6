"""Static extraction of an actor's name and metadata from its script (never runs it).

Python: the ``@actor`` decorator on the module's ``process`` function, in the three
forms Reflow uses: bare ``@actor`` (the name is the file stem), ``@actor({"component":
"x", ...})`` (a dict literal) and ``@actor(name="x", inports=[...], outports=[...])``
(keywords; ``component=`` works too). A script with an undecorated top-level
``process`` is an actor named after its file.

JavaScript: ``const metadata = {...}`` (an object literal of constants, as Node reads it:
JSON, or unquoted keys, single quotes, trailing commas and comments, which is JSON5;
with a ``component`` or ``name`` field), else a JSDoc ``@component Name`` tag, else a
named ``function process`` / ``function run`` or ``exports.process`` (the name is the
file stem). A literal that computes values (a variable, a call) is refused with the
reason, naming the file. JavaScript syntax is not checked otherwise; the sandbox
reports it when it loads the script.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

import json5

from .errors import MicroSandboxError
from .vocabulary import JSON, strict_json


class MetadataError(MicroSandboxError, ValueError):
    """The script is not a loadable actor; the message says why and where."""


class NotAnActor(MetadataError):
    """The script declares no actor at all (a helper file, skipped by discovery)."""


@dataclass(frozen=True)
class ExtractedMetadata:
    name: str
    metadata: dict[str, JSON]


def extract(source: str, language: str, stem: str, filename: str) -> ExtractedMetadata:
    """The actor declared by ``source``; ``stem`` names it when the script does not."""
    if language == "python":
        return extract_python(source, stem, filename)
    return extract_javascript(source, stem, filename)


# -- Python --------------------------------------------------------------------------


def extract_python(source: str, stem: str, filename: str) -> ExtractedMetadata:
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as error:
        raise MetadataError(
            f"{filename}: Python syntax error at line {error.lineno}: {error.msg}"
        ) from None
    process: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    decorated: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.expr]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = [d for d in node.decorator_list if _is_actor_decorator(d)]
            if decorators:
                decorated.append((node, decorators[0]))
            if node.name == "process":
                process = node
    wrong = [node.name for node, _ in decorated if node.name != "process"]
    if wrong:
        raise MetadataError(
            f"{filename}: @actor decorates {wrong[0]!r}, but the actor's function must be "
            "named 'process' (no process function)"
        )
    if process is None:
        if decorated:
            raise MetadataError(f"{filename}: no process function")
        raise NotAnActor(f"{filename}: no process function")
    metadata: dict[str, JSON] = {}
    if decorated:
        metadata = _decorator_metadata(decorated[0][1], filename)
    return _named(metadata, stem, filename)


def _is_actor_decorator(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id == "actor"
    return isinstance(node, ast.Attribute) and node.attr == "actor"


def _decorator_metadata(node: ast.expr, filename: str) -> dict[str, JSON]:
    if not isinstance(node, ast.Call):
        return {}  # bare @actor
    metadata: dict[str, JSON] = {}
    if node.args:
        first = node.args[0]
        if not isinstance(first, ast.Dict):
            raise MetadataError(f"{filename}: @actor(...) takes a dict literal or keywords")
        for key_node, value_node in zip(first.keys, first.values, strict=True):
            key = _literal(key_node) if key_node is not None else None
            if isinstance(key, str):
                _put_literal(metadata, key, value_node)
    for keyword in node.keywords:
        if keyword.arg is not None:
            _put_literal(metadata, keyword.arg, keyword.value)
    return metadata


def _put_literal(metadata: dict[str, JSON], key: str, node: ast.expr) -> None:
    value = _literal(node)
    if value is not _NOT_LITERAL:
        metadata[key] = value


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> JSON:
    """The value of a literal expression; values computed at run time are skipped."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL
    try:
        strict_json(value)
    except (TypeError, ValueError):
        return _NOT_LITERAL
    return value


# -- JavaScript ----------------------------------------------------------------------

_METADATA_DECL = re.compile(r"\b(?:const|let|var)\s+metadata\s*=\s*\{")
_JSDOC = re.compile(r"/\*\*.*?\*/", re.DOTALL)
_COMPONENT_TAG = re.compile(r"@component\s+([^\s*]+)")
_PROCESS_FUNCTION = re.compile(
    r"\b(?:async\s+)?function\s*\*?\s*(?:process|run)\s*\(|\bexports\.(?:process|run)\s*="
    r"|\bmodule\.exports\s*=\s*\{[^}]*\b(?:process|run)\b"
)


def extract_javascript(source: str, stem: str, filename: str) -> ExtractedMetadata:
    declaration = _METADATA_DECL.search(source)
    if declaration is not None:
        text = _balanced_object(source, declaration.end() - 1)
        if text is None:
            raise MetadataError(f"{filename}: `const metadata = {{` is never closed")
        return _named(_object_literal(text, filename), stem, filename)
    for comment in _JSDOC.finditer(source):
        tag = _COMPONENT_TAG.search(comment.group(0))
        if tag is not None:
            return _named({"component": tag.group(1)}, stem, filename)
    if _PROCESS_FUNCTION.search(source):
        return _named({}, stem, filename)
    raise NotAnActor(
        f"{filename}: no actor found (const metadata, a @component tag or function process)"
    )


def _object_literal(text: str, filename: str) -> JSON:
    """``const metadata``'s value: JSON, else JSON5 (what an object literal of constants is)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = json5.loads(text)
    except ValueError as error:
        raise MetadataError(
            f"{filename}: `const metadata` must be an object literal of constants (JSON, or "
            f"unquoted keys, single quotes and trailing commas as in JavaScript): {error}"
        ) from None
    try:
        strict_json(value)
    except ValueError:
        raise MetadataError(
            f"{filename}: `const metadata` holds NaN or Infinity, which JSON cannot carry"
        ) from None
    return value


def _balanced_object(source: str, start: int) -> str | None:
    """The ``{...}`` text starting at ``start``, skipping braces inside strings."""
    depth = 0
    quote: str | None = None
    index = start
    while index < len(source):
        char = source[index]
        if quote is not None:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return source[start : index + 1]
        index += 1
    return None


# -- shared --------------------------------------------------------------------------

_NAME = re.compile(r"[^\s:/\\]{1,200}")


def _named(metadata: JSON, stem: str, filename: str) -> ExtractedMetadata:
    if not isinstance(metadata, dict):
        raise MetadataError(f"{filename}: the actor metadata must be an object")
    name = metadata.get("component") or metadata.get("name") or stem
    if not isinstance(name, str) or not valid_name(name):
        raise MetadataError(f"{filename}: invalid actor name {name!r}")
    metadata = dict(metadata)
    metadata["component"] = name
    return ExtractedMetadata(name=name, metadata=metadata)


def valid_name(name: str) -> bool:
    """Actor names and namespace parts: no whitespace, ':' or slashes, 1..200 chars."""
    return _NAME.fullmatch(name) is not None
