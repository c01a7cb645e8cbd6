"""A wrong or missing variable stops a role's preflight with a message that tells
the operator what to set, before anything is installed."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import TEST_SECRETS, AnsibleRunner, output_of

PLAYBOOK = "tests/provisioning/preflight.yml"


def preflight(
    ansible: AnsibleRunner, roles: str | list[str], inventory: str, **extra: Any
) -> tuple[int, str]:
    """Runs the roles' preflight on an example inventory; the test secrets are given
    unless the test passes its own (or None to leave a secret out)."""
    variables = {**TEST_SECRETS, **extra}
    variables = {name: value for name, value in variables.items() if value is not None}
    result = ansible.playbook(
        PLAYBOOK,
        f"inventories/{inventory}",
        {"preflight_roles": [roles] if isinstance(roles, str) else roles, **variables},
    )
    # The assert message is one long line in the failed task's JSON; unfold it.
    return result.returncode, " ".join(output_of(result).split())


@pytest.mark.parametrize("inventory", ["local", "staging", "production"])
def test_example_inventory_with_its_secrets_passes_every_preflight(
    ansible: AnsibleRunner, inventory: str
) -> None:
    code, output = preflight(ansible, ["redis", "nginx", "prometheus", "microsandbox"], inventory)
    assert code == 0, output


def test_unknown_sandbox_backend_is_refused_with_the_allowed_backends(
    ansible: AnsibleRunner,
) -> None:
    code, output = preflight(
        ansible, "microsandbox", "local", microsandbox_sandbox_backend="firecracker"
    )
    assert code != 0
    assert 'microsandbox_sandbox_backend is "firecracker": set it to bubblewrap' in output


def test_missing_vault_password_stops_redis_with_how_to_create_the_vault(
    ansible: AnsibleRunner,
) -> None:
    code, output = preflight(ansible, "redis", "staging", vault_redis_password=None)
    assert code != 0
    assert "redis_requirepass is unset" in output
    assert "ansible-vault create inventories/<env>/group_vars/all/vault.yml" in output


def test_placeholder_redis_password_is_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(
        ansible, "redis", "staging", vault_redis_password="CHANGE-ME-CHANGE-ME-CHANGE-ME"
    )
    assert code != 0
    assert "redis_requirepass is unset, a placeholder" in output


def test_nodes_without_the_redis_password_are_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(ansible, "microsandbox", "staging", vault_redis_password=None)
    assert code != 0
    assert "microsandbox_redis_password is empty" in output
    assert "Actor state goes to Redis at 10.20.0.20" in output


def test_public_nodes_without_auth_tokens_are_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(
        ansible, "microsandbox", "staging", vault_microsandbox_auth_tokens=None
    )
    assert code != 0
    assert (
        "microsandbox_bind_address is 0.0.0.0 (not loopback) but "
        "microsandbox_auth_tokens is empty" in output
    )


def test_eviction_policy_is_refused_unless_explicitly_allowed(ansible: AnsibleRunner) -> None:
    code, output = preflight(ansible, "redis", "local", redis_maxmemory_policy="allkeys-lru")
    assert code != 0
    assert "redis_maxmemory_policy is allkeys-lru" in output
    assert "silently delete keys, i.e. actor state" in output

    code, output = preflight(
        ansible,
        "redis",
        "local",
        redis_maxmemory_policy="allkeys-lru",
        redis_allow_eviction=True,
    )
    assert code == 0, output


def test_pool_minimum_above_maximum_is_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(
        ansible, "microsandbox", "local", microsandbox_pool_python_min_instances=50
    )
    assert code != 0
    assert "lower microsandbox_pool_*_min_instances" in output


def test_drain_timeout_shorter_than_a_call_is_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(ansible, "microsandbox", "local", microsandbox_drain_timeout=5)
    assert code != 0
    assert "cuts off calls still running" in output


def test_draining_every_node_is_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(ansible, "nginx", "local", nginx_lb_drained=["localhost"])
    assert code != 0
    assert "names every sandbox node" in output


def test_tls_without_a_certificate_is_refused(ansible: AnsibleRunner) -> None:
    code, output = preflight(ansible, "nginx", "local", nginx_lb_tls_enabled=True)
    assert code != 0
    assert "nginx_lb_tls_certificate or nginx_lb_tls_certificate_key is empty" in output


PREFLIGHT_TAGS = "redis_preflight,nginx_preflight,prometheus_preflight,microsandbox_preflight"


def deploy_preflight(ansible: AnsibleRunner, **extra: Any) -> tuple[int, str]:
    """ansible/deploy.yml on the local inventory in check mode, only the tasks that
    always run: each role's argument_specs validation and preflight (nothing changes)."""
    result = ansible.playbook(
        "ansible/deploy.yml",
        "inventories/local",
        {**TEST_SECRETS, "ansible_become": False, **extra},
        "--check",
        "--tags",
        PREFLIGHT_TAGS,
    )
    return result.returncode, " ".join(output_of(result).split())


def test_deploy_playbook_validates_every_roles_arguments_and_preflight(
    ansible: AnsibleRunner,
) -> None:
    code, output = deploy_preflight(ansible)
    assert code == 0, output
    for role in ("redis", "microsandbox", "nginx", "prometheus"):
        assert f"{role} : Validating arguments against arg spec 'main'" in output


def test_deploy_refuses_a_wheel_path_that_is_not_there(ansible: AnsibleRunner) -> None:
    code, output = deploy_preflight(ansible, microsandbox_wheel_path="/nonexistent/x.whl")
    assert code != 0
    assert "microsandbox_wheel_path is /nonexistent/x.whl, which is not a .whl file" in output


def test_deploy_refuses_a_mistyped_role_argument(ansible: AnsibleRunner) -> None:
    code, output = deploy_preflight(ansible, nginx_lb_listen_port="eighty")
    assert code != 0
    assert "nginx_lb_listen_port" in output
