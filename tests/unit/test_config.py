"""The microsandbox.yaml model: defaults, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflow_microsandbox.config import ConfigError, load_config, parse_config


def test_defaults_match_the_guide() -> None:
    config = parse_config({})
    assert config.server.http_port == 5555
    assert config.server.ws_port == 5556
    assert config.server.metrics_port == 9090
    assert config.sandbox.memory_mb == 256
    assert config.sandbox.cpu_limit == 0.5
    assert config.compression.algorithm == "zstd"
    assert config.compression.threshold == 1024
    assert config.redis.url is None
    assert config.sandbox.call_timeout < 30


def test_guide_environment_variables_override_the_file() -> None:
    environ = {
        "MICROSANDBOX_REDIS_URL": "redis://:pw@redis:6379/0",
        "MICROSANDBOX_SANDBOX_MEMORY_MB": "512",
        "MICROSANDBOX_SANDBOX_CPU_LIMIT": "1.5",
        "MICROSANDBOX_COMPRESSION_ALGORITHM": "none",
        "MICROSANDBOX_SANDBOX_POOL_PYTHON_MIN_INSTANCES": "3",
        "MICROSANDBOX_SCRIPTS_FOLDERS": "/a, /b",
        "MICROSANDBOX_UNRELATED": "ignored",
    }
    config = parse_config({"sandbox": {"memory_mb": 128}}, environ)
    assert config.redis.url == "redis://:pw@redis:6379/0"
    assert config.sandbox.memory_mb == 512
    assert config.sandbox.cpu_limit == 1.5
    assert config.compression.algorithm == "none"
    assert config.sandbox.pool.python.min_instances == 3
    assert config.scripts.folders == ["/a", "/b"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"compression": {"algorithm": "lz4"}}, "compression.algorithm"),
        ({"compression": {"algorithm": "lz4"}}, "'zstd' or 'none'"),
        ({"sandbox": {"memory_mb": "lots"}}, "sandbox.memory_mb"),
        ({"sandbox": {"pool": {"python": {"min_instances": 5, "max_instances": 2}}}},
         "min_instances must not exceed max_instances"),
        ({"sandbox": {"call_timeout": 45}}, "sandbox.call_timeout"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"server": {"host": "0.0.0.0"}}, "auth.tokens is empty"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert expected in str(error.value)


def test_public_bind_is_allowed_with_tokens_or_explicit_opt_out() -> None:
    assert parse_config({"server": {"host": "0.0.0.0"}, "auth": {"tokens": ["t"]}})
    assert parse_config({"server": {"host": "0.0.0.0", "allow_unauthenticated": True}})


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    file = tmp_path / "microsandbox.yaml"
    file.write_text("scripts:\n  folders: [actors]\nstate:\n  sqlite_path: s.db\n")
    config = load_config(file, environ={})
    assert config.scripts.folders == [str(tmp_path / "actors")]
    assert config.state.sqlite_path == str(tmp_path / "s.db")


@pytest.mark.parametrize("text", ["- a\n- b\n", "server: [\n"])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    file = tmp_path / "microsandbox.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError):
        load_config(file, environ={})


def test_the_example_file_documents_every_key_with_its_default(repo_root: Path) -> None:
    import yaml

    from reflow_microsandbox.config import Config

    example = yaml.safe_load((repo_root / "microsandbox.example.yaml").read_text())

    def keys(node: object, prefix: str = "") -> set[str]:
        if not isinstance(node, dict):
            return {prefix}
        return set().union(*(keys(value, f"{prefix}{key}.") for key, value in node.items()))

    defaults = Config().model_dump()
    assert keys(example) == keys(defaults)
    assert parse_config(example) == Config()


def test_unknown_variables_spares_every_key_and_each_helper_is_one_the_deploy_files_set() -> None:
    """Every key's own variable is known (the list is the model's); each helper variable
    is really set by a deployment file of the repository, so the list cannot hide typos
    that nothing uses."""
    from reflow_microsandbox.config_env import HELPER_VARIABLES, unknown_variables
    from reflow_microsandbox.config_keys import keys

    assert unknown_variables({key.env: "1" for key in keys()}) == []
    assert unknown_variables(dict.fromkeys(HELPER_VARIABLES, "1")) == []
    repo = Path(__file__).resolve().parents[2]
    deploy_files = "".join((repo / name).read_text()
                           for name in ("docker-compose.yml", "docker-stack.yml"))
    assert [name for name in sorted(HELPER_VARIABLES) if name not in deploy_files] == []
    (typo,) = unknown_variables({"MICROSANDBOX_SANDBOX_MEMORY": "512", "OTHER_X": "1"})
    assert typo.suggestion is not None and typo.suggestion.name == "sandbox.memory_mb"
