"""Every key of microsandbox.yaml can be set through Ansible: the real render playbook,
given a non-default value for each key's role variable, writes each into the file, and
the control plane accepts the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reflow_microsandbox.config_keys import keys
from tests.config_values import other_value

from .conftest import AnsibleRunner, check_config_command, output_of, run_tool

# Values other_value cannot choose alone: preflight rules tying keys together (the drain
# outlasts the call timeout) and a URL that reads as one.
CHOSEN: dict[str, Any] = {
    "server.drain_timeout": 29.5,
    "redis.url": "redis://10.0.0.9:6380/2",
}


def _values() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in keys():
        value = CHOSEN.get(key.name, other_value(key)[1])
        if key.kind == "bool":
            value = not key.role_default
        assert value != key.role_default, key.name
        values[key.name] = value
    return values


def test_every_key_is_set_by_its_role_variable(ansible: AnsibleRunner, tmp_path: Path) -> None:
    values = _values()
    variables = {key.variable: values[key.name] for key in keys()}
    result = ansible.render("local", tmp_path, variables)
    assert result.returncode == 0, output_of(result)
    path = tmp_path / "localhost" / "microsandbox.yaml"
    rendered: Any = yaml.safe_load(path.read_text())
    wrong = {}
    for key in keys():
        node = rendered
        for part in key.path:
            node = node[part]
        if node != values[key.name]:
            wrong[key.variable] = (node, values[key.name])
    assert wrong == {}, "rendered value, variable's value"
    check = run_tool(check_config_command(path))
    assert check.returncode == 0, output_of(check)
