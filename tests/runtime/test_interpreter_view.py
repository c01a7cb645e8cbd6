"""What a bubblewrap sandbox sees is derived from each interpreter on this host, and a
piece the view lacks stops the start with the interpreter's own words, not a later call.

Debian's own Node.js (which loads parts of itself from /usr/share/nodejs) is not on these
machines; tests/vm/test_debian12_vm.py runs the sandbox tests under it in Debian 12.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend

from .helpers import TEST_SETTINGS, call, loaded

LIST_ROOT = """
const fs = require("fs");
function process(context) {
  return {node: globalThis.process.execPath, top: fs.readdirSync("/").sort()};
}
module.exports = {process};
"""


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A folder outside /usr (and outside /tmp, which every sandbox gets a fresh one of)."""
    folder = Path(tempfile.mkdtemp(prefix="reflow-interp-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def node_installed_at(folder: Path) -> Path:
    """This host's Node, installed again under ``folder``/bin (as a tarball install is)."""
    real = Path(os.path.realpath(shutil.which("node") or "/usr/bin/node"))
    target = folder / "node" / "bin" / "node"
    target.parent.mkdir(parents=True)
    try:
        os.link(real, target)
    except OSError:
        shutil.copy2(real, target)
    for part in (folder / "node", folder / "node" / "bin"):
        part.chmod(0o755)
    return target


async def test_a_node_installed_elsewhere_runs_with_its_own_view(elsewhere: Path) -> None:
    node = node_installed_at(elsewhere)
    backend = BubblewrapBackend(SandboxConfig(**{**TEST_SETTINGS, "node_binary": str(node)}))
    await backend.start()
    try:
        sandbox = await loaded(backend, LIST_ROOT, "nodejs")
        try:
            result = await call(sandbox)
        finally:
            await sandbox.close()
    finally:
        await backend.close()
    assert result["node"] == str(node)
    top = result["top"]
    assert isinstance(top, list)
    assert "var" in top  # the folder it lives in, read-only, and nothing else of /var
    assert {"etc", "home", "root", "work", "srv", "opt"}.isdisjoint(top)


async def test_a_node_that_cannot_start_in_the_sandbox_stops_the_start(elsewhere: Path) -> None:
    # A wrapper script in place of Node (as version managers install): it runs on the
    # host, but its /bin/sh is not part of what a sandbox sees.
    node = node_installed_at(elsewhere)
    wrapper = elsewhere / "shim" / "node"
    wrapper.parent.mkdir(mode=0o755)
    wrapper.write_text(f'#!/bin/sh\nexec {node} "$@"\n')
    wrapper.chmod(0o755)
    backend = BubblewrapBackend(SandboxConfig(**{**TEST_SETTINGS, "node_binary": str(wrapper)}))
    with pytest.raises(SandboxError) as raised:
        await backend.start()
    message = raised.value.message
    assert raised.value.kind == "unavailable"
    assert message.startswith("nodejs sandboxes do not start on this host"), message
    assert str(wrapper) in message  # bwrap's own words: it could not execute the wrapper


async def test_a_missing_interpreter_with_warm_sandboxes_wanted_stops_the_start() -> None:
    settings = SandboxConfig(**{**TEST_SETTINGS, "node_binary": "/nonexistent/bin/node"})
    with pytest.raises(SandboxError) as raised:
        await BubblewrapBackend(settings).start()
    assert "sandbox.pool.nodejs.min_instances is 1" in raised.value.message
    assert "sandbox.node_binary" in raised.value.message


async def test_a_missing_interpreter_without_warm_sandboxes_leaves_the_other_language() -> None:
    settings = SandboxConfig(
        **{
            **TEST_SETTINGS,
            "node_binary": "/nonexistent/bin/node",
            "pool": {"nodejs": {"min_instances": 0}},
        }
    )
    backend = BubblewrapBackend(settings)
    await backend.start()
    try:
        assert {e.language for e in backend.enforced_limits()} == {"python"}
        with pytest.raises(SandboxError) as raised:
            await backend.spawn("nodejs")
        assert raised.value.kind == "unavailable"
        sandbox = await loaded(backend, "def process(context):\n    return {'ok': 1}\n")
        try:
            assert await call(sandbox) == {"ok": 1}
        finally:
            await sandbox.close()
    finally:
        await backend.close()


async def test_a_missing_package_folder_stops_the_start(tmp_path: Path) -> None:
    present = tmp_path / "site-packages"
    present.mkdir()
    missing = tmp_path / "node_modules"
    settings = SandboxConfig(**{**TEST_SETTINGS, "package_dirs": [str(present), str(missing)]})
    with pytest.raises(SandboxError) as raised:
        await BubblewrapBackend(settings).start()
    assert raised.value.message == (
        f"sandbox.package_dirs: no such folder on this host: {missing}"
    )
