"""Dependency locks: what a dependency set resolved to, stored for other nodes (sans-I/O).

The first node to install a set records a lock in the state store; every other node
replays it, so all nodes run the same files:

- pip: ``{"kind": "pip", "packages": [{"name", "version", "sha256"}, ...]}`` from pip's
  installation report (``pip install --report``), replayed as ``name==version
  --hash=sha256:...`` lines with ``--require-hashes --no-deps``;
- npm: ``{"kind": "npm", "lock": <package-lock.json>}``, replayed with ``npm ci`` next to a
  package.json rebuilt from the function's own (checked) dependencies.

A lock read back from the store is checked before use, since the store is shared: pip
names and versions must parse, hashes be hex; an npm lock must name exactly the
function's dependencies at its root and may hold no links, local paths or non-HTTP(S)
sources. Anything else raises ``ValueError``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from packaging.version import InvalidVersion, Version

from .dependencies import Pairs, npm_dependencies

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def npm_package(pairs: Pairs) -> dict[str, Any]:
    """The package.json an install of ``pairs`` runs in."""
    return {
        "name": "reflow-function-dependencies",
        "version": "0.0.0",
        "private": True,
        "dependencies": npm_dependencies(pairs),
    }


def pip_lock(report: Any) -> bytes:
    """The lock of a ``pip install --report`` document."""
    packages = []
    for item in report.get("install", []) if isinstance(report, dict) else []:
        metadata = item.get("metadata", {})
        archive = (item.get("download_info", {}) or {}).get("archive_info", {}) or {}
        packages.append(
            {
                "name": metadata.get("name"),
                "version": metadata.get("version"),
                "sha256": (archive.get("hashes", {}) or {}).get("sha256"),
            }
        )
    packages.sort(key=lambda package: str(package["name"]).lower())
    return _canonical({"kind": "pip", "packages": packages})


def pip_requirements(lock_data: bytes) -> tuple[list[str], bool]:
    """Requirement lines replaying a pip lock, and whether every line carries a hash."""
    lock = json.loads(lock_data)
    packages = lock.get("packages") if isinstance(lock, dict) else None
    if lock.get("kind") != "pip" or not isinstance(packages, list):
        raise ValueError("not a pip lock")
    hashed = all(isinstance(item, dict) and item.get("sha256") for item in packages)
    lines = []
    for item in packages:
        name, version, digest = item.get("name"), item.get("version"), item.get("sha256")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"bad package name {name!r} in a pip lock")
        try:
            Version(str(version))
        except InvalidVersion:
            raise ValueError(f"bad version {version!r} of {name} in a pip lock") from None
        line = f"{name}=={version}"
        if hashed:
            if not _SHA256.fullmatch(str(digest)):
                raise ValueError(f"bad hash of {name} in a pip lock")
            line += f" --hash=sha256:{digest}"
        lines.append(line)
    return lines, hashed


def npm_lock(package_lock: Any) -> bytes:
    """The lock of an ``npm install``'s package-lock.json."""
    return _canonical({"kind": "npm", "lock": package_lock})


def npm_files(lock_data: bytes, pairs: Pairs) -> tuple[dict[str, Any], Any]:
    """(package.json, package-lock.json) replaying an npm lock for ``pairs``."""
    lock = json.loads(lock_data)
    if not isinstance(lock, dict) or lock.get("kind") != "npm":
        raise ValueError("not an npm lock")
    package_lock = lock.get("lock")
    entries = package_lock.get("packages") if isinstance(package_lock, dict) else None
    if not isinstance(entries, dict):
        raise ValueError("an npm lock without packages")
    package = npm_package(pairs)
    root = entries.get("", {})
    if not isinstance(root, dict) or root.get("dependencies", {}) != package["dependencies"]:
        raise ValueError("an npm lock for other dependencies")
    for path, entry in entries.items():
        if path == "":
            continue
        if not isinstance(entry, dict) or entry.get("link") or not path.startswith("node_modules/"):
            raise ValueError(f"an npm lock entry that is not a registry package: {path!r}")
        resolved = entry.get("resolved")
        if resolved is not None and not str(resolved).startswith(("https://", "http://")):
            raise ValueError(f"an npm lock entry from outside a registry: {resolved!r}")
    return package, package_lock
