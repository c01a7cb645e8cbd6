"""A language whose sandboxes cannot be started is reported with the backend's reason
(the server puts it in /ready), over the real bubblewrap backend.

A missing interpreter already stops the backend's start (tests/runtime/
test_interpreter_view.py); what the pool reports is a language that stops starting
later: here Node, installed outside /usr, is removed while the pool runs (an upgrade
half done, a broken host), and a call takes the warm sandbox so that a new one is needed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from reflow_microsandbox.pool import SandboxPool
from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from reflow_microsandbox.vocabulary import ActorSource
from tests.runtime.helpers import DictState, Events

from .conftest import context, settings

JS_ECHO = ActorSource(
    name="js_echo",
    namespace="default",
    language="nodejs",
    source="function process(context) { return {out: 1}; }\nmodule.exports = {process};\n",
)


def node_outside_usr() -> Path:
    """A copy of this host's Node in a folder of its own under /var/tmp."""
    folder = Path(tempfile.mkdtemp(prefix="reflow-node-", dir="/var/tmp"))
    folder.chmod(0o755)
    node = folder / "node"
    shutil.copy2(os.path.realpath(shutil.which("node") or "/usr/bin/node"), node)
    return node


async def test_a_language_that_cannot_start_sandboxes_is_reported_with_the_reason() -> None:
    node = node_outside_usr()
    folder = node.parent
    config = settings(python_min=1, node_min=1, node_binary=str(node))
    backend = BubblewrapBackend(config)
    await backend.start()
    pool = SandboxPool(backend, config)
    await pool.start()
    try:
        assert await pool.wait_warmed(30)
        assert pool.start_failures() == {}
        node.unlink()
        # The call gets the warm sandbox (Node is still running in it); its replacement fails.
        assert await pool.execute(JS_ECHO, context(JS_ECHO), DictState(), Events()) == {"out": 1}
        deadline = time.monotonic() + 30
        while "nodejs" not in pool.start_failures():
            assert time.monotonic() < deadline, "the failing language was not reported"
            await asyncio.sleep(0.05)
        failures = pool.start_failures()
        assert str(node) in failures["nodejs"], failures
        assert "python" not in failures
    finally:
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)
