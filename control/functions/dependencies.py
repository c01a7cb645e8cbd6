"""A function's dependencies as Reflow sends them (``{"package": "*"}``), checked and normalised.

Sans-I/O. What reaches pip or npm is only ever a package name and a version range
that passed these checks, never a flag, a URL, a path or a git reference: each of
those would make the installer fetch from somewhere other than the configured
registry, or run a build on the host.

- Python: names as PEP 508 allows them (normalised as PEP 503 does, so ``Six`` and
  ``six`` are one set); a version is ``*`` / empty (any), a PEP 440 version (pinned
  with ``==``) or a PEP 440 specifier set (``>=1,<2``). Parsed with ``packaging``,
  the reference implementation of those PEPs, which pip itself uses.
- Node: names as npm accepts them (``name`` or ``@scope/name``, at most 214
  characters; the rules of npm's ``validate-npm-package-name``); a version is ``*``
  or a semver range or dist-tag made only of ``0-9 A-Z a-z . ^ ~ < > = | * + -`` and
  spaces, so ``npm:``, ``file:``, ``git+…``, URLs and ``user/repo`` are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import MicroSandboxError
from ..vocabulary import Language

Pairs = tuple[tuple[str, str], ...]
"""Normalised dependencies: ``(name, version spec)``, sorted by name."""

_PYTHON_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NPM_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*")
_NPM_RANGE = re.compile(r"[0-9A-Za-z.^~<>=|*+ -]{1,64}")
_ANY = {"", "*", "latest"}
_MAX_NAME = 214
_MAX_SPEC = 128


class DependencyError(MicroSandboxError, ValueError):
    """A dependency that cannot be installed as given; the message names it."""


def normalise(language: Language, dependencies: Mapping[str, str] | None, limit: int) -> Pairs:
    """Checked, normalised, sorted ``(name, spec)`` pairs; :class:`DependencyError`.

    ``limit`` is the most dependencies one function may name. Two names that
    normalise to the same package are an error, not a silent merge.
    """
    if not dependencies:
        return ()
    if len(dependencies) > limit:
        raise DependencyError(
            f"{len(dependencies)} dependencies named; at most {limit} are allowed"
        )
    pairs: dict[str, str] = {}
    for raw_name, raw_spec in dependencies.items():
        if language == "python":
            name, spec = _python(raw_name, raw_spec)
        else:
            name, spec = _npm(raw_name, raw_spec)
        if name in pairs:
            raise DependencyError(f"dependency {raw_name!r} is named twice")
        pairs[name] = spec
    return tuple(sorted(pairs.items()))


def _python(name: str, spec: str) -> tuple[str, str]:
    if len(name) > _MAX_NAME or not _PYTHON_NAME.fullmatch(name):
        raise DependencyError(f"{name!r} is not a Python package name (PEP 508)")
    canonical = canonicalize_name(name)
    text = spec.strip()
    if len(text) > _MAX_SPEC:
        raise DependencyError(f"the version of {name!r} is longer than {_MAX_SPEC} characters")
    if text in _ANY:
        return canonical, ""
    try:
        return canonical, f"=={Version(text)}"
    except InvalidVersion:
        pass
    try:
        specifiers = SpecifierSet(text)
    except InvalidSpecifier:
        raise DependencyError(
            f"version {spec!r} of {name!r} is neither '*', a version nor a PEP 440 "
            "specifier such as '>=1.2,<2'"
        ) from None
    return canonical, str(specifiers)


def _npm(name: str, spec: str) -> tuple[str, str]:
    if len(name) > _MAX_NAME or not _NPM_NAME.fullmatch(name) or name.startswith((".", "_")):
        raise DependencyError(f"{name!r} is not an npm package name")
    text = spec.strip()
    if text in _ANY:
        return name, "*"
    if not _NPM_RANGE.fullmatch(text) or text.startswith("-"):
        raise DependencyError(
            f"version {spec!r} of {name!r} is not a semver range or tag (URLs, paths, git "
            "and npm: aliases are not installed)"
        )
    return name, " ".join(text.split())


def set_key(language: Language, pairs: Pairs) -> str:
    """The identity of an exact dependency set (SHA-256 hex), per language."""
    text = json.dumps([language, [list(pair) for pair in pairs]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def pip_requirements(pairs: Pairs) -> list[str]:
    """Requirement strings for pip (``name`` or ``name<spec>``)."""
    return [f"{name}{spec}" for name, spec in pairs]


def npm_dependencies(pairs: Pairs) -> dict[str, str]:
    """The ``dependencies`` object of a package.json."""
    return dict(pairs)
