"""Dependencies as Reflow sends them (``{"package": "*"}``), installed for real from PyPI
and npm on the node (wheels only, no install scripts) into a shared cache, mounted
read-only into that function's sandboxes only; installs that fail fail the deploy
with the installer's own message; other nodes install the same lock.

Packages: ``inflection`` (one small pure wheel, no dependencies) and ``is-number``
(one small npm package, no dependencies); ``pycrypto`` ships only source, so
``--only-binary :all:`` must refuse it rather than build it on the host.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess, config_data

from .conftest import StartNode, client_for
from .dynasb_client import DeployFailed, DynAsbClient
from .test_deploy_call import metric

PYTHON_WITH_DEPENDENCY = """
import os
import inflection

def process(context):
    folder = os.path.dirname(inflection.__file__)
    try:
        with open(os.path.join(folder, "planted.py"), "w") as planted:
            planted.write("x = 1")
        wrote = "written"
    except OSError as error:
        wrote = type(error).__name__ + ": " + (error.strerror or "")
    return {"camel": inflection.camelize(context.get_input("text")), "write": wrote}
"""

NODE_WITH_DEPENDENCY = """
const fs = require('fs');
const path = require('path');
const isNumber = require('is-number');

function process(context) {
  let wrote = 'written';
  try {
    fs.writeFileSync(path.join(path.dirname(require.resolve('is-number')), 'planted.js'), '1');
  } catch (error) {
    wrote = error.code;
  }
  return {yes: isNumber(context.getInput('value')), no: isNumber('seven'), write: wrote};
}
module.exports = {process};
"""

PYTHON_WITHOUT = "import inflection\n\ndef process(context):\n    return {}\n"


async def test_dependencies_install_once_and_are_mounted_read_only_into_their_function(
    start_node: StartNode,
) -> None:
    server = await start_node()
    reflow = client_for(server)
    python_id = await reflow.deploy(
        "camel", "python", PYTHON_WITH_DEPENDENCY, dependencies={"inflection": "*"}
    )
    node_id = await reflow.deploy(
        "numbers", "nodejs", NODE_WITH_DEPENDENCY, dependencies={"is-number": "*"}
    )
    async with reflow.connect(python_id) as actor:
        reply = await actor.process("camel", {"text": "reflow_micro_sandbox"})
    assert reply.error is None, reply.raw
    assert reply.outputs == {
        "camel": "ReflowMicroSandbox",
        "write": "OSError: Read-only file system",
    }
    async with reflow.connect(node_id) as actor:
        reply = await actor.process("numbers", {"value": 5})
    assert reply.error is None, reply.raw
    assert reply.outputs == {"yes": True, "no": False, "write": "EROFS"}
    for runtime in ("python", "nodejs"):
        assert (
            await metric(
                server, "microsandbox_dependency_installs_total", runtime=runtime,
                outcome="resolved",
            )
            == 1
        )  # fmt: skip
        assert (
            await metric(
                server, "microsandbox_dependency_install_duration_seconds_count", runtime=runtime
            )
            == 1
        )

    # The same set for other code comes from the cache: no installer runs.
    other = PYTHON_WITH_DEPENDENCY.replace("camelize", "underscore")
    other_id = await reflow.deploy("snake", "python", other, dependencies={"inflection": "*"})
    async with reflow.connect(other_id) as actor:
        reply = await actor.process("snake", {"text": "ReflowSandbox"})
    assert reply.outputs is not None and reply.outputs["camel"] == "reflow_sandbox"
    assert (
        await metric(
            server, "microsandbox_dependency_installs_total", runtime="python", outcome="cached"
        )
        >= 1
    )
    assert (
        await metric(
            server, "microsandbox_dependency_installs_total", runtime="python", outcome="resolved"
        )
        == 1
    )

    # A function that did not ask for the package does not see it.
    plain_id = await reflow.deploy("plain", "python", PYTHON_WITHOUT)
    async with reflow.connect(plain_id) as actor:
        reply = await actor.process("plain", {})
    assert reply.error is not None and "No module named 'inflection'" in reply.error["message"]


async def test_a_dependency_that_cannot_be_had_fails_the_deploy_with_the_installers_message(
    start_node: StartNode,
) -> None:
    server = await start_node()
    reflow = client_for(server)
    missing = "reflow-microsandbox-no-such-package-0c5d9"
    cases = [
        ("python", "def process(c):\n    return {}\n", {missing: "*"},
         [f"No matching distribution found for {missing}"]),
        # Source only: with wheels only nothing is built (or run) on the node.
        ("python", "def process(c):\n    return {}\n", {"pycrypto": "*"},
         ["No matching distribution found for pycrypto"]),
        ("python", "def process(c):\n    return {}\n", {"inflection": "==99.0"},
         ["inflection==99.0"]),
        ("nodejs", "module.exports = () => ({});", {missing: "*"}, ["404", missing]),
    ]  # fmt: skip
    for runtime, code, dependencies, words in cases:
        status, body = await reflow.deploy_raw("needs", runtime, code, dependencies=dependencies)
        assert status == 422 and body["success"] is False, body
        assert body["error"].startswith("the dependencies could not be installed:"), body
        for word in words:
            assert word in body["error"], (word, body["error"])
    assert await server.functions._store.count() == 0
    assert (
        await metric(
            server, "microsandbox_dependency_installs_total", runtime="python", outcome="failed"
        )
        == 3
    )


async def test_status_says_deploying_until_the_dependencies_are_in(
    start_node: StartNode,
) -> None:
    server = await start_node(functions={"install_wait": 0})
    reflow = client_for(server)
    status, body = await reflow.deploy_raw(
        "camel", "python", PYTHON_WITH_DEPENDENCY, dependencies={"inflection": "*"}
    )
    assert status == 200 and body["success"] is True
    function_id = body["function_id"]
    # pip needs far longer than a status round trip.
    assert (await reflow.status(function_id)).state == "deploying"
    async with reflow.connect(function_id) as actor:
        early = await actor.process("camel", {"text": "a_b"})
    assert early.error is not None and early.error["data"]["kind"] == "unavailable"
    assert "installing" in early.error["message"]
    assert (await reflow.wait_ready(function_id, 120)).state == "ready"
    assert reflow.polls > 1
    async with reflow.connect(function_id) as actor:
        reply = await actor.process("camel", {"text": "a_b"})
    assert reply.outputs is not None and reply.outputs["camel"] == "AB"

    # An install that fails after the answer turns the state to "failed".
    status, body = await reflow.deploy_raw(
        "broken", "python", "def process(c):\n    return {}\n",
        dependencies={"reflow-microsandbox-no-such-package-0c5d9": "*"},
    )  # fmt: skip
    assert body["success"] is True
    with pytest.raises(DeployFailed, match="unhealthy: failed"):
        await reflow.wait_ready(body["function_id"], 120)
    _, detail = await reflow._request("GET", f"/api/v1/functions/{body['function_id']}")
    assert "No matching distribution" in detail["error"]


async def test_another_node_installs_the_same_lock_on_its_first_call(
    start_node: StartNode,
) -> None:
    node_a = await start_node(name="a")
    node_b = await start_node(name="b")
    function_id = await client_for(node_a).deploy(
        "camel", "python", PYTHON_WITH_DEPENDENCY, dependencies={"inflection": "*"}
    )
    on_b = client_for(node_b)
    async with on_b.connect(function_id) as actor:
        reply = await actor.process("camel", {"text": "node_b"})
    assert reply.error is None, reply.raw
    assert reply.outputs is not None and reply.outputs["camel"] == "NodeB"
    assert (
        await metric(
            node_b, "microsandbox_dependency_installs_total", runtime="python",
            outcome="replayed",
        )
        == 1
    )  # fmt: skip

    def installed(cache: str) -> list[str]:
        return sorted(p.name for p in Path(cache).iterdir() if not p.name.startswith("."))

    on_a = await asyncio.to_thread(installed, node_a.config.functions.dependency_cache)
    on_b_disk = await asyncio.to_thread(installed, node_b.config.functions.dependency_cache)
    assert on_a == on_b_disk and len(on_a) == 1  # the same lock, hence the same folder
    assert (await on_b.status(function_id)).invocation_count == 1


async def test_the_cache_drops_sets_unused_for_the_idle_time_and_stale_builds(
    start_node: StartNode,
) -> None:
    server = await start_node(functions={"install_timeout": 60})
    function_id = await client_for(server).deploy(
        "camel", "python", PYTHON_WITH_DEPENDENCY, dependencies={"inflection": "*"}
    )
    async with client_for(server).connect(function_id) as actor:
        assert (await actor.process("camel", {"text": "a_b"})).outputs is not None
    installer = server.functions._installer
    cache = installer.cache

    def prepare() -> tuple[Path, Path, Path]:
        (in_use,) = [p for p in cache.iterdir() if p.name.startswith("python-")]
        old_set, stale_build = cache / "python-0123", cache / ".python-killed"
        for folder in (old_set, stale_build):
            folder.mkdir()
            os.utime(folder, (time.time() - 3600, time.time() - 3600))
        os.utime(in_use, (time.time() - 3600, time.time() - 3600))
        return in_use, old_set, stale_build

    in_use, old_set, stale_build = await asyncio.to_thread(prepare)
    # What the sweeper does: marks the sets of loaded functions used, drops builds older
    # than twice the install timeout, keeps sets younger than the idle timeout (24 h).
    server.functions.sweep(time.monotonic() - 86400)
    assert not await asyncio.to_thread(stale_build.exists)
    assert await asyncio.to_thread(old_set.exists)
    # With a shorter idle time the unused set goes; the one in use stays.
    assert installer.prune(set(), older_than=600) == 1
    assert not await asyncio.to_thread(old_set.exists)
    assert await asyncio.to_thread(in_use.exists)


async def test_a_node_started_by_the_cli_installs_dependencies(
    scripts: Path,
    tmp_path: Path,
    dependency_cache: Path,
    server_processes: list[ServerProcess],
) -> None:
    """``reflow-microsandbox serve`` runs on uvloop, whose subprocesses take fewer keywords
    than asyncio's: the installer must work on the loop users actually run."""
    data = config_data(
        scripts, tmp_path, None, functions={"dependency_cache": str(dependency_cache / "cli")}
    )
    node = ServerProcess(data, tmp_path / "cli")
    server_processes.append(node.start())
    await node.wait_ready()
    reflow = DynAsbClient(f"http://127.0.0.1:{node.http_port}", f"ws://127.0.0.1:{node.ws_port}/ws")
    function_id = await reflow.deploy(
        "camel", "python", PYTHON_WITH_DEPENDENCY, dependencies={"inflection": "*"}
    )
    async with reflow.connect(function_id) as actor:
        reply = await actor.process("camel", {"text": "from_the_cli"})
    assert reply.error is None, (reply.raw, node.log)
    assert reply.outputs is not None and reply.outputs["camel"] == "FromTheCli"
    missing = "reflow-microsandbox-no-such-package-0c5d9"
    status, body = await reflow.deploy_raw(
        "needs", "python", PYTHON_WITHOUT, dependencies={missing: "*"}
    )
    assert status == 422 and f"No matching distribution found for {missing}" in body["error"]
