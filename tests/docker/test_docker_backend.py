"""The Docker backend against the real engine: calls, limits, ownership, clear failures.

The isolation battery (host files, network, fork bomb, memory, loops, floods, secrets,
/tmp) runs against this backend through tests/runtime's parametrized ``backend`` fixture;
these tests cover what only the Docker backend has: containers, labels, images, the engine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.docker.backend import DockerBackend
from reflow_microsandbox.sandbox.docker.owner import OWNER, Owner, process_start_time
from reflow_microsandbox.vocabulary import ActorSource, CallContext, Language
from tests.runtime.helpers import DictState, Events

from .conftest import REPO_ROOT, containers_labelled, small_settings

pytestmark = pytest.mark.docker


def actor(source: str, language: Language = "python") -> ActorSource:
    return ActorSource("probe", "tests", language, textwrap.dedent(source))


async def run_once(
    backend: DockerBackend, source: str, language: Language = "python", timeout: float = 10
) -> dict[str, Any]:
    sandbox = await backend.spawn(language)
    try:
        await sandbox.load(actor(source, language))
        return await sandbox.call(
            CallContext("probe", "tests", {"n": 2}), DictState(), Events(), timeout=timeout
        )
    finally:
        await sandbox.close()


def docker_cli(*args: str, stdin: str | None = None) -> str:
    """Run the docker CLI (blocking: a quick call outside the sandbox's own path)."""
    done = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def start_control_plane() -> tuple[subprocess.Popen[str], str]:
    """A real control-plane process with one sandbox; returns it and the container id."""
    process = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@pytest.fixture
def living_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def container_running(container_id: str) -> bool | None:
    """True/False for a container's running state, None once it no longer exists."""
    probe = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", container_id],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return None
    return probe.stdout.strip() == "true"


async def test_python_and_node_sandboxes_answer_warm_calls_with_state_and_pushes(
    docker_backend: DockerBackend,
) -> None:
    python = await docker_backend.spawn("python")
    node = await docker_backend.spawn("nodejs")
    await python.load(
        actor(
            """
            async def process(context):
                count = await context.get_state("count", 0)
                await context.set_state("count", count + 1)
                await context.send_output("seen", count)
                return {"double": context.get_input("n") * 2}
            """
        )
    )
    await node.load(
        actor(
            """
            async function process(context) {
              const count = await context.getState("count", 0);
              await context.setState("count", count + 1);
              await context.sendOutput("seen", count);
              return { double: context.getInput("n") * 2 };
            }
            module.exports = { process };
            """,
            "nodejs",
        )
    )
    for sandbox in (python, node):
        state, events = DictState(), Events()
        for _ in range(3):
            result = await sandbox.call(
                CallContext("probe", "tests", {"n": 21}), state, events, timeout=10
            )
            assert result == {"double": 42}
        assert state.values == {"count": 3}
        assert events.outputs == [("seen", 0), ("seen", 1), ("seen", 2)]
        assert sandbox.alive
    await python.close()
    await node.close()
    assert not python.alive


async def test_script_runs_unprivileged_with_no_capabilities_network_or_writable_root(
    docker_backend: DockerBackend,
) -> None:
    result = await run_once(
        docker_backend,
        """
        import os

        def process(context):
            status = dict(
                line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
            )
            try:
                open("/opt/reflow/planted", "w")
                root_writable = True
            except OSError:
                root_writable = False
            with open("/tmp/scratch", "w") as scratch:
                scratch.write("ok")
            return {
                "uid": os.getuid(),
                "caps": status["CapEff"].strip(),
                "no_new_privs": status["NoNewPrivs"].strip(),
                "seccomp": status["Seccomp"].strip(),
                "interfaces": sorted(os.listdir("/sys/class/net")),
                "root_writable": root_writable,
                "environment": sorted(k for k in os.environ if k not in ("PATH", "HOSTNAME")),
            }
        """,
    )
    assert result["uid"] == 10001
    assert int(result["caps"], 16) == 0
    assert result["no_new_privs"] == "1"
    assert result["seccomp"] == "2"  # the engine's default profile (filter mode)
    assert result["interfaces"] == ["lo"]
    assert result["root_writable"] is False
    assert "MICROSANDBOX" not in " ".join(result["environment"])


async def test_memory_use_comes_from_the_container_cgroup_and_grows_with_the_script(
    docker_backend: DockerBackend,
) -> None:
    sandbox = await docker_backend.spawn("python")
    try:
        idle = sandbox.memory_usage()
        assert idle is not None and 1_000_000 < idle < 64 * 1024 * 1024
        await sandbox.load(
            actor(
                """
                kept = []

                def process(context):
                    kept.append(bytearray(48 * 1024 * 1024))
                    return {"held": len(kept)}
                """
            )
        )
        await sandbox.call(CallContext("probe", "tests"), DictState(), Events(), timeout=10)
        busy = sandbox.memory_usage()
        assert busy is not None and busy - idle > 40 * 1024 * 1024
    finally:
        await sandbox.close()


async def test_going_over_the_memory_limit_is_a_memory_error_and_kills_the_container(
    docker_backend: DockerBackend,
) -> None:
    sandbox = await docker_backend.spawn("python")
    await sandbox.load(
        actor(
            """
            def process(context):
                chunks = []
                for _ in range(64):
                    chunks.append(bytearray(16 * 1024 * 1024))
                return {"survived": True}
            """
        )
    )
    with pytest.raises(SandboxError) as caught:
        await sandbox.call(CallContext("probe", "tests"), DictState(), Events(), timeout=10)
    assert caught.value.kind == "memory"
    assert not sandbox.alive
    assert container_running(sandbox.container_id) is None
    assert await run_once(docker_backend, "def process(context):\n    return 1\n") == {"output": 1}


RAW_WRITERS: dict[Language, str] = {
    "python": """
        import os
        def process(context):
            n = context.get_input("n")
            os.write(1, b"raw out %d\\n" % n)
            os.write(2, b"raw err %d\\n" % n)
            return {"n": n}
        """,
    "nodejs": """
        const fs = require("fs");
        function process(context) {
          const n = context.getInput("n");
          fs.writeSync(1, `raw out ${n}\\n`);
          fs.writeSync(2, `raw err ${n}\\n`);
          return { n };
        }
        module.exports = { process };
        """,
}


@pytest.mark.parametrize("language", sorted(RAW_WRITERS))
async def test_raw_fd_writes_are_logs_of_the_call_that_wrote_them_every_time(
    docker_backend: DockerBackend, language: Language
) -> None:
    # The engine copies stdout (frames) and stderr (raw bytes) separately: without the
    # end-of-call marker some of these calls would end before their raw bytes arrived.
    sandbox = await docker_backend.spawn(language)
    try:
        await sandbox.load(actor(RAW_WRITERS[language], language))
        for n in range(25):
            events = Events()
            result = await sandbox.call(
                CallContext("probe", "tests", {"n": n}), DictState(), events, timeout=10
            )
            assert result == {"n": n}
            text = "\n".join(events.logs)
            assert f"raw out {n}" in text and f"raw err {n}" in text, (n, events.logs)
            assert "msb-end" not in text and "\x00" not in text, events.logs
    finally:
        await sandbox.close()


# Scripts that close stderr descriptors before they return: only fd 2, or every
# descriptor leading to the stderr pipe except fd 1 (which also takes the runner's
# private copy, so the end-of-call marker is lost and the backend must stop waiting).
CLOSERS: dict[tuple[Language, str], str] = {
    ("python", "fd 2"): """
        import os
        def process(context):
            if os.path.exists("/proc/self/fd/2"):
                os.close(2)
            os.write(1, b"still logged\\n")
            return {"ok": True}
        """,
    ("python", "every stderr fd"): """
        import os
        def process(context):
            pipe = os.readlink("/proc/self/fd/1")
            for fd in map(int, os.listdir("/proc/self/fd")):
                try:
                    if fd != 1 and os.readlink(f"/proc/self/fd/{fd}") == pipe:
                        os.close(fd)
                except OSError:
                    pass
            os.write(1, b"still logged\\n")
            return {"ok": True}
        """,
    ("nodejs", "fd 2"): """
        const fs = require("fs");
        function process(context) {
          if (fs.existsSync("/proc/self/fd/2")) fs.closeSync(2);
          fs.writeSync(1, "still logged\\n");
          return { ok: true };
        }
        module.exports = { process };
        """,
    ("nodejs", "every stderr fd"): """
        const fs = require("fs");
        function process(context) {
          const pipe = fs.readlinkSync("/proc/self/fd/1");
          for (const fd of fs.readdirSync("/proc/self/fd").map(Number)) {
            try {
              if (fd !== 1 && fs.readlinkSync(`/proc/self/fd/${fd}`) === pipe) fs.closeSync(fd);
            } catch (error) {}
          }
          fs.writeSync(1, "still logged\\n");
          return { ok: true };
        }
        module.exports = { process };
        """,
}


@pytest.mark.parametrize(("language", "closes"), sorted(CLOSERS))
async def test_a_script_closing_its_stderr_descriptors_still_gets_results_and_logs(
    docker_backend: DockerBackend, language: Language, closes: str
) -> None:
    sandbox = await docker_backend.spawn(language)
    try:
        await sandbox.load(actor(CLOSERS[language, closes], language))
        for _ in range(2):
            events = Events()
            result = await sandbox.call(
                CallContext("probe", "tests"), DictState(), events, timeout=10
            )
            assert result == {"ok": True}
            assert sandbox.alive
            assert any("still logged" in message for message in events.logs), events.logs
    finally:
        await sandbox.close()


async def test_endless_loop_times_out_and_its_container_is_removed(
    docker_backend: DockerBackend,
) -> None:
    sandbox = await docker_backend.spawn("python")
    await sandbox.load(actor("def process(context):\n    while True:\n        pass\n"))
    with pytest.raises(SandboxError) as caught:
        await sandbox.call(CallContext("probe", "tests"), DictState(), Events(), timeout=1)
    assert caught.value.kind == "timeout"
    assert not sandbox.alive
    assert container_running(sandbox.container_id) is None


async def test_no_container_remains_after_the_backend_closes(
    docker_settings: SandboxConfig,
) -> None:
    backend = DockerBackend(docker_settings)
    await backend.start()
    await backend.spawn("python")
    await backend.spawn("nodejs")
    owned = f"{OWNER}={backend.owner.ident}"
    assert len(containers_labelled(owned)) == 2
    await backend.close()
    assert containers_labelled(owned) == []


CONTROL_PLANE = """
import asyncio, sys
from reflow_microsandbox.sandbox.docker.backend import DockerBackend
from tests.docker.conftest import small_settings

async def main():
    backend = DockerBackend(small_settings())
    await backend.start()
    sandbox = await backend.spawn("python")
    print(sandbox.container_id, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_killed_control_planes_containers_stop_and_the_next_start_reaps_them(
    docker_settings: SandboxConfig,
) -> None:
    control_plane, container_id = start_control_plane()
    try:
        assert container_running(container_id) is True
    finally:
        control_plane.send_signal(signal.SIGKILL)
        control_plane.wait()
    # The engine closes the runner's stdin with the dead owner's connection: it exits.
    for _ in range(100):
        if not container_running(container_id):
            break
        await asyncio.sleep(0.1)
    assert container_running(container_id) is False

    successor = DockerBackend(docker_settings)
    await successor.start()
    try:
        assert container_id in successor.reaped
        assert container_running(container_id) is None
    finally:
        await successor.close()


async def test_containers_of_a_control_plane_that_still_runs_are_left_alone(
    docker_settings: SandboxConfig, living_process: subprocess.Popen[bytes]
) -> None:
    neighbour = living_process
    me = Owner.current()
    start = process_start_time(neighbour.pid)
    assert start is not None
    labels = Owner(me.host, me.boot, neighbour.pid, start).labels()
    create = ["create"]
    for key, value in labels.items():
        create += ["--label", f"{key}={value}"]
    image = docker_settings.docker.python_image
    container_id = docker_cli(*create, "--network", "none", image, "true")
    try:
        backend = DockerBackend(docker_settings)
        await backend.start()
        await backend.close()
        assert container_id not in backend.reaped
        assert container_running(container_id) is False  # still there, never started
    finally:
        docker_cli("rm", "-f", container_id)


async def test_a_missing_image_is_an_unavailable_error_naming_it_and_the_build_script(
    docker_ready: None,
) -> None:
    settings = small_settings()
    settings.docker.node_image = "reflow-microsandbox/no-such-runner:never-built"
    backend = DockerBackend(settings)
    with pytest.raises(SandboxError) as caught:
        await backend.start()
    assert caught.value.kind == "unavailable"
    assert "reflow-microsandbox/no-such-runner:never-built" in caught.value.message
    assert "scripts/build-images.sh" in caught.value.message


async def test_an_image_built_from_another_runner_is_refused_with_a_rebuild_hint(
    docker_ready: None,
) -> None:
    stale = "reflow-microsandbox/python-runner:test-stale-runner"
    settings = small_settings()
    dockerfile = (
        f"FROM {settings.docker.python_image}\n"
        "LABEL io.reflow.microsandbox.runner-sha256=from-an-older-runner\n"
    )
    docker_cli("build", "-q", "-t", stale, "-", stdin=dockerfile)
    try:
        settings.docker.python_image = stale
        with pytest.raises(SandboxError) as caught:
            await DockerBackend(settings).start()
        assert caught.value.kind == "unavailable"
        assert stale in caught.value.message and "scripts/build-images.sh" in caught.value.message
    finally:
        docker_cli("rmi", "-f", stale)


@pytest.mark.timeout(60)
async def test_an_unreachable_engine_is_an_unavailable_error_not_a_hang(
    docker_ready: None, tmp_path: Path
) -> None:
    # A socket that exists but where nothing accepts, and a path with no socket at all.
    silent = tmp_path / "silent.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(silent))
    try:
        for host in (f"unix://{silent}", f"unix://{tmp_path / 'absent.sock'}"):
            settings = small_settings()
            settings.docker.docker_host = host
            started = time.monotonic()
            with pytest.raises(SandboxError) as caught:
                await DockerBackend(settings).start()
            assert caught.value.kind == "unavailable"
            assert host in caught.value.message
            print(f"{host}: failed after {time.monotonic() - started:.2f} s")
    finally:
        bound.close()
        os.unlink(silent)
