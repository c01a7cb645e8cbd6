"""The config model is the single source of microsandbox.yaml's keys: the example file, the
role's defaults and argument specs, the template, the operator guide's table and the
committed renders all carry exactly its keys, and every key can be set by its
environment variable and by its role variable."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field, create_model

from reflow_microsandbox import cli, config_keys
from reflow_microsandbox.config import Config, StateConfig, parse_config
from reflow_microsandbox.config_keys import LEGACY_VARIABLES, ROLE_PREFIX, Key, keys
from reflow_microsandbox.config_sources import (
    SOURCES,
    ConfigSourcesError,
    check,
    render_template,
    write,
)
from tests.config_values import other_value

ROLE = Path("ansible/roles/microsandbox")


def _leaves(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, value in mapping.items():
        if isinstance(value, dict):
            names |= _leaves(value, f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def test_every_generated_file_matches_the_config_model(repo_root: Path) -> None:
    drifted = check(repo_root)
    assert drifted == {}, "run `reflow-microsandbox config-sources --write`; drift:\n" + "\n".join(
        drifted.values()
    )


@pytest.mark.parametrize("path", ["compose/microsandbox.yaml", "k8s/base/config/microsandbox.yaml"])
def test_the_committed_renders_carry_every_key_of_the_model(repo_root: Path, path: str) -> None:
    # compose/ (also the swarm stack's config) and k8s/ are renders of the template
    # (tests/deploy compares them with a fresh render); here: no key missing or extra.
    rendered = yaml.safe_load((repo_root / path).read_text())
    assert _leaves(rendered) == {key.name for key in keys()}
    parse_config(rendered)


def test_every_key_has_one_role_variable_named_by_the_rule_or_the_legacy_table(
    repo_root: Path,
) -> None:
    variables = [key.variable for key in keys()]
    assert len(set(variables)) == len(variables)
    for key in keys():
        ruled = ROLE_PREFIX + "_".join(key.path)
        assert key.variable == LEGACY_VARIABLES.get(key.name, ruled)
        assert key.env.lower() == ruled
    # The table lists only real keys whose old names differ from the rule.
    names = {key.name for key in keys()}
    assert set(LEGACY_VARIABLES) <= names
    assert all(var != ROLE_PREFIX + name.replace(".", "_")
               for name, var in LEGACY_VARIABLES.items())  # fmt: skip
    defaults = yaml.safe_load((repo_root / ROLE / "defaults/main.yml").read_text())
    specs = yaml.safe_load((repo_root / ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for key in keys():
        assert defaults[key.variable] == key.role_default, key.name
        assert options[key.variable]["default"] == key.role_default, key.name


def test_state_locks_can_be_set_through_ansible() -> None:
    # The drift that started this: state.lock_timeout and state.lock_ttl had no variable.
    template = render_template()
    assert "lock_timeout: {{ microsandbox_state_lock_timeout | float }}" in template
    assert "lock_ttl: {{ microsandbox_state_lock_ttl | float }}" in template


def _inventory_variables(repo_root: Path) -> dict[str, set[str]]:
    files = [
        *sorted((repo_root / "inventories").rglob("*.yml")),
        repo_root / "compose/inventory.yml",
        repo_root / "k8s/inventory.yml",
    ]
    found: dict[str, set[str]] = {}

    def collect(node: Any, source: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if isinstance(name, str) and name.startswith(ROLE_PREFIX):
                    found.setdefault(source, set()).add(name)
                collect(value, source)

    for file in files:
        collect(yaml.safe_load(file.read_text()), str(file.relative_to(repo_root)))
    return found


def test_the_example_inventories_set_only_variables_the_role_knows(repo_root: Path) -> None:
    known = set(yaml.safe_load((repo_root / ROLE / "defaults/main.yml").read_text()))
    found = _inventory_variables(repo_root)
    assert found, "no inventory sets a microsandbox_ variable"
    unknown = {source: sorted(names - known) for source, names in found.items() if names - known}
    assert unknown == {}


@pytest.mark.parametrize("key", keys(), ids=lambda key: key.env)
def test_every_key_is_set_by_its_environment_variable(key: Key) -> None:
    text, value = other_value(key)
    config: Any = parse_config({}, {key.env: text})
    for part in key.path:
        config = getattr(config, part)
    assert config == value
    assert value != key.default


def test_nullable_keys_take_null_from_the_environment() -> None:
    nullable = [key for key in keys() if key.nullable]
    assert nullable
    config = parse_config({"redis": {"url": "redis://x"}}, {key.env: "null" for key in nullable})
    assert config.redis.url is None


def _copy_sources(repo_root: Path, dest: Path) -> None:
    for source in SOURCES:
        (dest / source.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / source.path, dest / source.path)


def test_drift_is_reported_file_by_file_with_a_diff(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_sources(repo_root, tmp_path)
    template = tmp_path / "templates/microsandbox.yaml.j2"
    text = template.read_text()
    template.write_text(text.replace("  lock_ttl: {{ microsandbox_state_lock_ttl | float }}\n", ""))
    drifted = check(tmp_path)
    assert list(drifted) == ["templates/microsandbox.yaml.j2"]
    assert (
        "+  lock_ttl: {{ microsandbox_state_lock_ttl | float }}"
        in drifted["templates/microsandbox.yaml.j2"]
    )
    assert cli.main(["config-sources", "--root", str(tmp_path)]) == cli.EXIT_FAILED
    out = capsys.readouterr()
    assert "+  lock_ttl:" in out.out
    assert "config-sources --write" in out.err
    # --write restores it; the hand-written head of the template stays as it was.
    assert cli.main(["config-sources", "--write", "--root", str(tmp_path)]) == 0
    assert template.read_text() == text
    assert check(tmp_path) == {}


def test_a_file_without_its_markers_is_refused_by_name(repo_root: Path, tmp_path: Path) -> None:
    _copy_sources(repo_root, tmp_path)
    defaults = tmp_path / ROLE / "defaults/main.yml"
    defaults.write_text(
        "\n".join(
            line for line in defaults.read_text().splitlines() if "END config keys" not in line
        )
    )
    with pytest.raises(ConfigSourcesError, match=r"defaults/main\.yml: needs exactly one line"):
        check(tmp_path)
    assert cli.main(["config-sources", "--root", str(tmp_path)]) == cli.EXIT_CONFIG


def test_adding_a_key_to_the_model_is_one_change(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_sources(repo_root, tmp_path)
    state = create_model(
        "StateWithSpin",
        __base__=StateConfig,
        lock_spin=(float, Field(0.25, gt=0, le=5, description="Seconds between lock polls.")),
    )
    model = create_model(
        "ConfigWithSpin",
        __base__=Config,
        state=(state, Field(default_factory=state, description="Actor state.")),
    )
    monkeypatch.setattr(config_keys, "Config", model)
    assert "state.lock_spin" in {key.name for key in keys()}
    assert sorted(check(tmp_path)) == sorted(source.path for source in SOURCES)
    write(tmp_path)
    assert check(tmp_path) == {}

    example = yaml.safe_load((tmp_path / "microsandbox.example.yaml").read_text())
    assert example["state"]["lock_spin"] == 0.25
    defaults = yaml.safe_load((tmp_path / ROLE / "defaults/main.yml").read_text())
    assert defaults["microsandbox_state_lock_spin"] == 0.25
    specs = yaml.safe_load((tmp_path / ROLE / "meta/argument_specs.yml").read_text())
    spec = specs["argument_specs"]["main"]["options"]["microsandbox_state_lock_spin"]
    assert spec["type"] == "float"
    assert "Allowed: above 0 and at most 5." in spec["description"]
    template = (tmp_path / "templates/microsandbox.yaml.j2").read_text()
    assert "  lock_spin: {{ microsandbox_state_lock_spin | float }}\n" in template
    guide = (tmp_path / "docs/provisioning.md").read_text()
    assert (
        "| `microsandbox_state_lock_spin` | `state.lock_spin`, `MICROSANDBOX_STATE_LOCK_SPIN` |"
        in (guide)
    )


# Set in a control plane container's environment for the entrypoint's own use, not read
# as a config key (docker-stack.yml turns it into MICROSANDBOX_FUNCTIONS_DEPENDENCY_CACHE).
NOT_KEYS = {"MICROSANDBOX_DEPENDENCY_CACHE"}


def _deployment_environment(repo_root: Path) -> dict[str, set[str]]:
    """MICROSANDBOX_* names the deployment files give the control plane's containers."""
    found: dict[str, set[str]] = {}
    for name in ("docker-compose.yml", "docker-stack.yml"):
        service = yaml.safe_load((repo_root / name).read_text())["services"]["microsandbox"]
        names = set(service.get("environment") or {})
        script = " ".join(str(part) for part in service.get("entrypoint") or [])
        names |= set(re.findall(r"\b(MICROSANDBOX_\w+)=", script))
        found[name] = names
    for path in sorted((repo_root / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                names = {item["name"] for item in container.get("env", [])}
                found.setdefault(str(path.relative_to(repo_root)), set()).update(names)
    return {
        source: {name for name in names if name.startswith("MICROSANDBOX_")}
        for source, names in found.items()
    }


def test_deployments_override_only_keys_that_exist(repo_root: Path) -> None:
    # A misspelt MICROSANDBOX_* variable is ignored by the control plane: catch it here.
    found = _deployment_environment(repo_root)
    assert found["docker-compose.yml"] and found["k8s/base/control-plane.yaml"]
    known = {key.env for key in keys()} | NOT_KEYS
    unknown = {source: sorted(names - known) for source, names in found.items() if names - known}
    assert unknown == {}
