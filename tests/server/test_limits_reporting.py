"""The server says which sandbox limits are in force: a log line at start and a gauge."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from reflow_microsandbox.sandbox.bubblewrap.backend import BubblewrapBackend
from reflow_microsandbox.server import Server

from .conftest import StartServer, make_config
from .test_http_batches_metrics import scrape

GAUGE = "microsandbox_sandbox_limits_enforced"
HOST_MECHANISM = (
    "cgroup_v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "cgroup_v1"
)


async def metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return scrape(await response.text())


def labels(language: str, limit: str, mechanism: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            {
                "backend": "bubblewrap",
                "language": language,
                "limit": limit,
                "mechanism": mechanism,
            }.items()
        )
    )


async def test_limits_in_force_are_logged_and_exported(
    start_server: StartServer, scripts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reflow_microsandbox.server")
    server = await start_server(make_config(scripts, tmp_path, None), warm=False)
    samples = await metrics(server)
    for language in ("python", "nodejs"):
        for limit in ("memory", "cpu", "processes"):
            assert samples[(GAUGE, labels(language, limit, HOST_MECHANISM))] == 1
        assert samples[(GAUGE, labels(language, "open_files", "rlimit"))] == 1
    assert not [key for key, value in samples.items() if key[0] == GAUGE and value != 1]
    said = [r.getMessage() for r in caplog.records if "sandbox limits in force" in r.getMessage()]
    assert said and f"cpu={HOST_MECHANISM}" in said[0], said


async def test_limits_the_host_cannot_give_are_exported_as_zero_and_logged(
    scripts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(scripts, tmp_path, None, sandbox={"allow_rlimits_only": True})
    # An empty folder for the cgroup mount: a host without a hierarchy.
    (tmp_path / "no-cgroups").mkdir()
    backend = BubblewrapBackend(config.sandbox, cgroup_root=tmp_path / "no-cgroups")
    async with Server(config, backend=backend, ephemeral_ports=True) as server:
        samples = await metrics(server)
    assert samples[(GAUGE, labels("nodejs", "cpu", "none"))] == 0
    assert samples[(GAUGE, labels("nodejs", "memory", "none"))] == 0
    assert samples[(GAUGE, labels("python", "memory", "rlimit"))] == 1
    assert samples[(GAUGE, labels("python", "processes", "rlimit"))] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT enforced" in w and "nodejs cpu" in w for w in warnings), warnings
