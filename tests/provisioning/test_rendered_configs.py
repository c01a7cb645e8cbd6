"""Every template, rendered through ansible/render.yml for every example inventory,
passes the check of the program that will read it: nginx -t, promtool, the control
plane's check-config and a real redis-server."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml
from redis.connection import parse_url

from .conftest import (
    INVENTORIES,
    NGINX_CHECK,
    REDIS_CHECK,
    REPO,
    TEST_SECRETS,
    AnsibleRunner,
    check_config_command,
    inventory_groups,
    output_of,
    run_tool,
)

Rendered = Callable[[str], Path]


def _hosts(ansible: AnsibleRunner, inventory: str, group: str) -> list[str]:
    hosts = inventory_groups(ansible, inventory).get(group, [])
    assert hosts, f"inventories/{inventory} has no {group}"
    return hosts


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_balancer_config_passes_nginx_t_and_lists_every_node_in_every_upstream(
    ansible: AnsibleRunner, rendered: Rendered, inventory: str
) -> None:
    out = rendered(inventory)
    nodes = _hosts(ansible, inventory, "sandbox_nodes")
    for balancer in _hosts(ansible, inventory, "loadbalancers"):
        conf = out / balancer / "nginx-loadbalancer.conf"
        check = run_tool([str(NGINX_CHECK), str(conf)])
        assert check.returncode == 0, output_of(check)
        text = conf.read_text()
        for upstream in ("microsandbox_http", "microsandbox_rpc", "microsandbox_rpc_affinity"):
            block = re.search(rf"upstream {upstream} \{{(.*?)\n\}}", text, re.S)
            assert block, f"{balancer}: no upstream {upstream}"
            named = re.findall(r"# node=(\S+)", block.group(1))
            assert named == nodes


def test_balancer_with_tls_serves_ssl_on_its_port(rendered: Rendered) -> None:
    text = (rendered("production") / "prod-lb-1" / "nginx-loadbalancer.conf").read_text()
    assert re.search(r"^\s*listen 8080 ssl;", text, re.M)
    assert "ssl_certificate " in text


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_prometheus_config_and_alert_rules_pass_promtool(
    ansible: AnsibleRunner, rendered: Rendered, inventory: str, tmp_path: Path
) -> None:
    out = rendered(inventory)
    nodes = _hosts(ansible, inventory, "sandbox_nodes")
    for monitor in _hosts(ansible, inventory, "monitoring"):
        rules = out / monitor / "microsandbox-alerts.yml"
        check_rules = run_tool(["promtool", "check", "rules", str(rules)])
        assert check_rules.returncode == 0, output_of(check_rules)
        # Every alert of the template reached the rendered file, and promtool read them all.
        template = Path(__file__).resolve().parents[2] / "templates/microsandbox-alerts.yml.j2"
        wanted = len(re.findall(r"^\s*- alert: ", template.read_text(), flags=re.M))
        groups = yaml.safe_load(rules.read_text())["groups"]
        assert sum(len(group["rules"]) for group in groups) == wanted
        assert f"SUCCESS: {wanted} rules found" in check_rules.stdout + check_rules.stderr

        # The rendered config loads rules from /etc/prometheus/rules: point it at the
        # rendered rules so promtool checks the pair together.
        config = yaml.safe_load((out / monitor / "prometheus.yml").read_text())
        rules_dir = tmp_path / monitor / "rules"
        rules_dir.mkdir(parents=True)
        (rules_dir / rules.name).write_text(rules.read_text())
        config["rule_files"] = [str(rules_dir / "*.yml")]
        candidate = tmp_path / monitor / "prometheus.yml"
        candidate.write_text(yaml.safe_dump(config))
        check_config = run_tool(["promtool", "check", "config", str(candidate)])
        assert check_config.returncode == 0, output_of(check_config)

        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        labelled = [group["labels"]["node"] for group in jobs["microsandbox"]["static_configs"]]
        assert labelled == nodes

        # The exporters: Redis beside each Redis host, nginx beside each balancer, the node
        # exporter on every host of the cluster (each listed once).
        scraped = {
            job: [group["labels"]["host"] for group in jobs[job]["static_configs"]]
            for job in ("redis", "nginx", "node")
        }
        groups = inventory_groups(ansible, inventory)
        assert scraped["redis"] == groups["redis"]
        assert scraped["nginx"] == groups["loadbalancers"]
        every_host = [h for g in ("loadbalancers", "redis", "monitoring", "sandbox_nodes")
                      for h in groups[g]]
        assert scraped["node"] == list(dict.fromkeys(every_host))


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_microsandbox_yaml_passes_the_control_planes_check_config(
    ansible: AnsibleRunner, rendered: Rendered, inventory: str
) -> None:
    out = rendered(inventory)
    redis_address = {"local": "127.0.0.1", "staging": "10.20.0.20", "production": "10.30.0.20"}[
        inventory
    ]
    for node in _hosts(ansible, inventory, "sandbox_nodes"):
        path = out / node / "microsandbox.yaml"
        check = run_tool(check_config_command(path))
        assert check.returncode == 0, output_of(check)
        config = yaml.safe_load(path.read_text())
        # Every node of a cluster shares one Redis, reached by address (not inventory
        # name), with the vault password surviving URL quoting.
        parsed = parse_url(config["redis"]["url"])  # type: ignore[no-untyped-call]
        assert parsed["password"] == TEST_SECRETS["vault_redis_password"]
        assert parsed["host"] == redis_address
        assert parsed["port"] == 6379


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_from_rendered_conf(rendered: Rendered, tmp_path: Path) -> Iterator[int]:
    """A real redis-server started from the local inventory's rendered redis.conf,
    moved to a free port and a temp dir (the rest of the file as rendered)."""
    conf = rendered("local") / "localhost" / "redis.conf"
    check = run_tool([str(REDIS_CHECK), str(conf)])
    assert check.returncode == 0, output_of(check)
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", str(conf), "--port", str(port), "--dir", str(tmp_path),
         "--logfile", str(tmp_path / "redis.log"), "--pidfile", str(tmp_path / "redis.pid"),
         "--supervised", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, password=TEST_SECRETS["vault_redis_password"])
        for _ in range(200):  # bounded: up to ~10 s for the server to listen
            if process.poll() is not None:
                pytest.fail("redis-server exited: " + (tmp_path / "redis.log").read_text())
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_rendered_redis_refuses_clients_without_the_password(redis_from_rendered_conf: int) -> None:
    anonymous = redis.Redis(port=redis_from_rendered_conf)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("actor:x", "1")


def test_rendered_redis_persists_with_aof_everysec_and_never_evicts(
    redis_from_rendered_conf: int,
) -> None:
    client = redis.Redis(
        port=redis_from_rendered_conf,
        password=TEST_SECRETS["vault_redis_password"],
        decode_responses=True,
    )
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("maxmemory") == {"maxmemory": str(256 * 1024 * 1024)}


def test_redis_config_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "redis.conf"
    broken.write_text("appendfsync sometimes\n")
    check = run_tool([str(REDIS_CHECK), str(broken)])
    assert check.returncode != 0
    assert "appendfsync" in check.stderr


def test_nginx_include_check_rejects_a_broken_balancer_file(tmp_path: Path) -> None:
    broken = tmp_path / "lb.conf"
    broken.write_text(
        "upstream empty {\n}\n"
        "server { listen 127.0.0.1:1; location / { proxy_pass http://empty; } }\n"
    )
    check = run_tool([str(NGINX_CHECK), str(broken)])
    assert check.returncode != 0
    assert "no servers are inside upstream" in check.stderr


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_rendered_yaml_files_pass_yamllint(
    ansible: AnsibleRunner, rendered: Rendered, inventory: str
) -> None:
    files = sorted(str(p) for p in rendered(inventory).rglob("*.y*ml"))
    assert files
    result = ansible.run("yamllint", "--strict", "-c", str(REPO / ".yamllint"), *files)
    assert result.returncode == 0, output_of(result)
