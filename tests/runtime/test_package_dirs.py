"""A sandbox spawned with package folders (a deployed function's dependencies) imports
from them, cannot write to them, and a sandbox spawned without them does not see them:
on both backends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.base import Backend

from .helpers import actor_source, call

PYTHON = """
import os
import msbpkg

def process(context):
    try:
        open(os.path.join(os.path.dirname(msbpkg.__file__), "planted.py"), "w").close()
        wrote = "written"
    except OSError as error:
        wrote = error.strerror
    return {"value": msbpkg.VALUE, "write": wrote}
"""

NODE = """
const fs = require('fs');
const path = require('path');
const msbpkg = require('msbpkg');

function process(context) {
  let wrote = 'written';
  try {
    fs.writeFileSync(path.join(path.dirname(require.resolve('msbpkg')), 'planted.js'), '1');
  } catch (error) {
    wrote = error.code;
  }
  return {value: msbpkg.VALUE, write: wrote};
}
module.exports = {process};
"""


@pytest.fixture
def packages() -> Iterator[tuple[Path, Path]]:
    """(a Python package folder, a node_modules folder), world-readable, removed after."""
    root = Path(tempfile.mkdtemp(prefix="msb-packages-"))
    root.chmod(0o755)
    site = root / "site"
    site.mkdir(mode=0o755)
    (site / "msbpkg.py").write_text("VALUE = 41\n")
    module = root / "node_modules" / "msbpkg"
    module.mkdir(parents=True, mode=0o755)
    (root / "node_modules").chmod(0o755)
    (module / "index.js").write_text("module.exports = {VALUE: 42};\n")
    for path in (site / "msbpkg.py", module / "index.js"):
        path.chmod(0o644)
    try:
        yield site, root / "node_modules"
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_package_folders_are_importable_read_only_and_only_where_mounted(
    backend: Backend, packages: tuple[Path, Path]
) -> None:
    site, node_modules = packages
    for language, folder, source, value, refused in (
        ("python", site, PYTHON, 41, "Read-only file system"),
        ("nodejs", node_modules, NODE, 42, "EROFS"),
    ):
        sandbox = await backend.spawn(language, package_dirs=[str(folder)])  # type: ignore[arg-type]
        try:
            await sandbox.load(actor_source(source, language))  # type: ignore[arg-type]
            assert await call(sandbox, timeout=10) == {"value": value, "write": refused}
        finally:
            await sandbox.close()
        plain = await backend.spawn(language)  # type: ignore[arg-type]
        try:
            with pytest.raises(SandboxError) as missing:
                await plain.load(actor_source(source, language))  # type: ignore[arg-type]
            assert missing.value.kind == "load_error"
            assert "msbpkg" in missing.value.message
        finally:
            await plain.close()
    assert not (site / "planted.py").exists()
