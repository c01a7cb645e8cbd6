"""The Docker engine as the sandbox backend needs it: blocking SDK calls, run in threads.

Everything here talks to the engine through the ``docker`` SDK and blocks, so the backend
calls it through ``asyncio.to_thread`` and only at the edges of a sandbox's life (create,
start, inspect after death, remove). Calls themselves never touch the engine: they go over
the container's attached stdin/stdout (see :mod:`.attach`).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
from docker.client import DockerClient, from_env
from docker.types import LogConfig, Ulimit

from ...config import SandboxConfig
from ...errors import SandboxError
from ...runners import NODE_RUNNER, PYTHON_RUNNER
from ...vocabulary import Language
from .owner import LANGUAGE, MANAGED, OWNER, Owner

RUNNER_FILES: dict[Language, Path] = {"python": PYTHON_RUNNER, "nodejs": NODE_RUNNER}
RUNNER_LABEL = "io.reflow.microsandbox.runner-sha256"
BUILD_HINT = "scripts/build-images.sh builds it"
SANDBOX_UID = "10001:10001"
ENGINE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Launched:
    """A started container and the hijacked socket attached to its stdin/stdout/stderr."""

    container_id: str
    sock: socket.socket
    host_pid: int


def image_for(settings: SandboxConfig, language: Language) -> str:
    docker_settings = settings.docker
    return docker_settings.python_image if language == "python" else docker_settings.node_image


def connect(docker_host: str | None, timeout: float = ENGINE_TIMEOUT) -> Any:
    """A client for the engine (negotiating the API version), or ``unavailable``."""
    where = docker_host or "the default Docker host (DOCKER_HOST or /var/run/docker.sock)"
    try:
        if docker_host:
            client = DockerClient(base_url=docker_host, timeout=timeout)
        else:
            client = from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        raise SandboxError(
            "unavailable",
            f"cannot reach the Docker engine at {where}: {error} "
            "(scripts/start-dockerd.sh starts one; sandbox.docker.docker_host selects another)",
        ) from None
    return client


def check_image(client: Any, image: str, runner: Path) -> None:
    """Raise ``unavailable`` when ``image`` is missing or was built from another runner."""
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise SandboxError(
            "unavailable",
            f"the sandbox image {image} is missing: {BUILD_HINT} "
            "(or set sandbox.docker.python_image / node_image to an image that exists)",
            details={"image": image},
        ) from None
    except docker.errors.APIError as error:
        raise SandboxError("unavailable", f"cannot inspect image {image}: {error}") from None
    built_from = (found.labels or {}).get(RUNNER_LABEL)
    if built_from and runner.exists():
        ours = hashlib.sha256(runner.read_bytes()).hexdigest()
        if built_from != ours:
            raise SandboxError(
                "unavailable",
                f"the sandbox image {image} was built from a different {runner.name} than "
                f"this control plane's: rebuild it ({BUILD_HINT})",
                details={"image": image},
            )


def _host_config(client: Any, settings: SandboxConfig, package_dirs: Sequence[str]) -> Any:
    memory = f"{settings.memory_mb}m"
    file_size = settings.max_file_size_mb * 1024 * 1024
    return client.api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={settings.tmp_size_mb}m,mode=1777"},
        shm_size=f"{min(settings.tmp_size_mb, 64)}m",
        cap_drop=["ALL"],
        # The engine's default seccomp profile applies because none is named here.
        security_opt=["no-new-privileges:true"],
        pids_limit=settings.max_processes,
        mem_limit=memory,
        memswap_limit=memory,
        nano_cpus=int(settings.cpu_limit * 1e9),
        ulimits=[
            Ulimit(name="nofile", soft=settings.max_open_files, hard=settings.max_open_files),
            Ulimit(name="fsize", soft=file_size, hard=file_size),
            Ulimit(name="core", soft=0, hard=0),
        ],
        # tini as pid 1 reaps the zombies a script's children leave behind.
        init=True,
        # What a script writes to the container's stderr is not kept on the host's disk.
        log_config=LogConfig(type=LogConfig.types.NONE),
        ipc_mode="private",
        # Package folders of the host (the engine's host), read-only at the same path.
        binds={directory: {"bind": directory, "mode": "ro"} for directory in package_dirs},
    )


def launch(
    client: Any,
    settings: SandboxConfig,
    language: Language,
    command: Sequence[str],
    labels: Mapping[str, str],
    name: str,
    package_dirs: Sequence[str] = (),
) -> Launched:
    """Create a container, attach to its stdio, then start it (so no output is missed).

    ``stdin_open`` with ``StdinOnce`` (what ``detach=False`` sets) makes the engine close
    the runner's stdin when our attach connection closes, even when this process is killed:
    the runner then exits by itself.
    """
    image = image_for(settings, language)
    api = client.api
    environment: dict[str, str] = {}
    if package_dirs:
        variable = "REFLOW_PACKAGE_DIRS" if language == "python" else "NODE_PATH"
        environment[variable] = ":".join(package_dirs)
    try:
        created = api.create_container(
            image,
            command=list(command),
            user=SANDBOX_UID,
            working_dir="/tmp",
            hostname="sandbox",
            environment=environment,
            labels={**labels, LANGUAGE: language},
            name=name,
            detach=False,
            stdin_open=True,
            tty=False,
            host_config=_host_config(client, settings, package_dirs),
        )
    except docker.errors.ImageNotFound:
        raise SandboxError(
            "unavailable", f"the sandbox image {image} is missing: {BUILD_HINT}"
        ) from None
    except (docker.errors.DockerException, OSError) as error:
        raise SandboxError("unavailable", f"cannot create a {image} container: {error}") from None
    container_id: str = created["Id"]
    try:
        wrapped = api.attach_socket(
            container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        sock = _own_socket(wrapped)
        api.start(container_id)
        state = api.inspect_container(container_id)["State"]
    except Exception as error:
        remove(client, container_id)
        if isinstance(error, SandboxError):
            raise
        raise SandboxError("unavailable", f"cannot start a {image} container: {error}") from None
    return Launched(container_id, sock, int(state.get("Pid") or 0))


def _own_socket(wrapped: Any) -> socket.socket:
    """A socket of our own for the hijacked attach connection, detached from the SDK's HTTP
    response (which would otherwise close it when garbage-collected)."""
    raw = getattr(wrapped, "_sock", wrapped)
    if not isinstance(raw, socket.socket):
        raise SandboxError(
            "unavailable",
            "the Docker attach connection is not a plain socket (TLS hosts are "
            "not supported by the docker backend)",
        )
    sock = raw.dup()
    response = getattr(wrapped, "_response", None)
    for closable in (response, wrapped):
        try:
            if closable is not None:
                closable.close()
        except (OSError, ValueError):
            pass
    return sock


def exit_state(client: Any, container_id: str, wait: float = 5.0) -> Mapping[str, Any]:
    """The container's final state (``OOMKilled``, ``ExitCode``), waiting briefly for exit."""
    api = client.api
    # A container that will not stop is force-removed by the caller anyway.
    with contextlib.suppress(Exception):
        api.wait(container_id, timeout=wait)
    try:
        state: Mapping[str, Any] = api.inspect_container(container_id)["State"]
    except (docker.errors.DockerException, OSError):
        return {}
    return state


def remove(client: Any, container_id: str) -> None:
    """Kill and remove one container; quietly done if it is already gone."""
    try:
        client.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        if "already in progress" not in str(error):
            raise


def managed_containers(client: Any) -> list[tuple[str, dict[str, str]]]:
    """(id, labels) of every container on the engine that a control plane labelled."""
    found = client.api.containers(all=True, filters={"label": f"{MANAGED}=true"})
    return [(item["Id"], dict(item.get("Labels") or {})) for item in found]


def reap_untracked(client: Any, owner: Owner, keep: set[str]) -> list[str]:
    """Remove this owner's containers whose id or name is not in ``keep``: the ones a
    restarted engine still lists after their sandboxes died with the old engine (their
    removal failed while it was away). Raises the SDK's errors when the engine is away."""
    removed = []
    found = client.api.containers(all=True, filters={"label": f"{OWNER}={owner.ident}"})
    for item in found:
        names = {name.lstrip("/") for name in item.get("Names") or ()}
        if item["Id"] not in keep and not names & keep:
            remove(client, item["Id"])
            removed.append(item["Id"])
    return removed


def reap(client: Any, owner: Owner, *, mine: bool = False) -> list[str]:
    """Remove the containers of dead owners on this host (or, with ``mine``, our own)."""
    removed = []
    for container_id, labels in managed_containers(client):
        own = labels.get(OWNER) == owner.ident
        if (mine and own) or (not mine and owner.is_dead_owner(labels)):
            remove(client, container_id)
            removed.append(container_id)
    return removed
