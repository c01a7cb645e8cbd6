"""The repository's Ansible and YAML pass the linters and ansible's own syntax check,
and every role option is typed in argument_specs and documented for operators."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import INVENTORIES, REPO, AnsibleRunner, output_of

ROLES = ("redis", "nginx", "prometheus", "microsandbox", "node_exporter")
PLAYBOOKS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "ansible").glob("*.yml"))


def test_ansible_lint_passes_with_the_production_profile(ansible: AnsibleRunner) -> None:
    result = ansible.run("ansible-lint", "--offline", "--profile", "production", timeout=280)
    assert result.returncode == 0, output_of(result)


def test_yamllint_passes_over_the_repository(ansible: AnsibleRunner) -> None:
    result = ansible.run("yamllint", "--strict", "--format", "parsable", ".")
    assert result.returncode == 0, output_of(result)


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_syntax_check(
    ansible: AnsibleRunner, playbook: str, inventory: str
) -> None:
    result = ansible.run(
        "ansible-playbook", "--syntax-check", "-i", f"inventories/{inventory}", playbook
    )
    assert result.returncode == 0, output_of(result)


def _defaults(role: str) -> dict[str, object]:
    data = yaml.safe_load((REPO / "ansible/roles" / role / "defaults/main.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("role", ROLES)
def test_every_role_default_is_typed_and_described_in_argument_specs(role: str) -> None:
    specs = yaml.safe_load((REPO / "ansible/roles" / role / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = _defaults(role)
    assert sorted(set(defaults) - set(options)) == [], "defaults without an argument spec"
    assert sorted(set(options) - set(defaults)) == [], "argument specs without a default"
    undescribed = [name for name, spec in options.items() if not spec.get("description")]
    assert undescribed == []
    untyped = [name for name, spec in options.items() if not spec.get("type")]
    assert untyped == []


@pytest.mark.parametrize("role", ROLES)
def test_every_role_default_is_in_the_operator_guide(role: str) -> None:
    guide = (REPO / "docs/provisioning.md").read_text()
    missing = [name for name in _defaults(role) if f"`{name}`" not in guide]
    assert missing == [], f"docs/provisioning.md does not document {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_variable_carries_the_role_prefix(role: str) -> None:
    wrong = [name for name in _defaults(role) if not name.startswith(f"{role}_")]
    assert wrong == []


def test_every_template_starts_with_the_ansible_managed_header() -> None:
    templates = sorted((REPO / "templates").glob("*.j2")) + sorted(
        (REPO / "ansible/roles").glob("*/templates/*.j2")
    )
    assert templates
    without = [
        str(path.relative_to(REPO))
        for path in templates
        if not path.read_text().startswith("{{ ansible_managed | comment }}")
    ]
    assert without == []


def _role_files() -> list[Path]:
    return sorted((REPO / "ansible/roles").glob("*/tasks/*.yml")) + sorted(
        (REPO / "ansible/roles").glob("*/handlers/*.yml")
    )


def test_every_template_task_that_installs_a_service_config_validates_it() -> None:
    unvalidated = []
    for path in _role_files():
        for task in yaml.safe_load(path.read_text()) or []:
            if not isinstance(task, dict):
                continue
            template = task.get("ansible.builtin.template")
            if template is None:
                continue
            dest = str(template.get("dest", ""))
            # The systemd unit and /etc/default are checked by systemd itself on restart.
            if dest.startswith("/etc/systemd/") or "defaults_path" in dest:
                continue
            if "validate" not in template:
                unvalidated.append(f"{path.relative_to(REPO)}: {task.get('name')}")
    assert unvalidated == []
