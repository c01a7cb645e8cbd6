"""What the monitoring tests share: the templates rendered by the real render playbook,
and the real /metrics of every component (tests/monitoring/components.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.provisioning.conftest import TEST_SECRETS, AnsibleRunner, output_of

from . import components


@dataclass(frozen=True)
class Rendered:
    """inventories/local rendered by ansible/render.yml (the roles' default thresholds),
    with the balancer and its stub_status moved to free loopback ports."""

    dir: Path
    balancer_port: int
    stub_status: str


@pytest.fixture(scope="session")
def rendered_local(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    runner = AnsibleRunner(home=tmp_path_factory.mktemp("monitoring-ansible-home"))
    dest = tmp_path_factory.mktemp("monitoring-render")
    balancer_port = components.free_port()
    stub_status = f"127.0.0.1:{components.free_port()}"
    result = runner.render("local", dest, {
        **TEST_SECRETS,
        "nginx_lb_access_log": "off",
        "nginx_lb_listen_port": balancer_port,
        "nginx_stub_status_listen": stub_status,
    })  # fmt: skip
    assert result.returncode == 0, output_of(result)
    return Rendered(dest / "localhost", balancer_port, stub_status)


@dataclass(frozen=True)
class Scraped:
    """What each component's /metrics returned, and the control plane's flood strings."""

    control_plane: str
    redis: str
    nginx: str
    node: str
    flood: list[str]

    def by_component(self) -> dict[str, str]:
        return {"control plane": self.control_plane, "redis exporter": self.redis,
                "nginx exporter": self.nginx, "node exporter": self.node}


@pytest.fixture(scope="session")
def scraped(rendered_local: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Scraped:
    """Every component run for real, scraped once, and stopped again."""
    processes = components.Processes(tmp_path_factory.mktemp("components"))
    try:
        control_plane, flood = components.control_plane_metrics(processes)
        return Scraped(
            control_plane=control_plane,
            redis=components.redis_exporter_metrics(processes),
            nginx=components.nginx_exporter_metrics(
                processes, rendered_local.dir / "nginx-loadbalancer.conf",
                rendered_local.balancer_port, rendered_local.stub_status,
            ),
            node=components.node_exporter_metrics(processes),
            flood=flood,
        )
    finally:
        processes.stop()
