"""The command line: check-config exit codes, `run` for script authors, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .clients import RawClient
from .conftest import ServerProcess, alive, config_data, descendants

CLI = [sys.executable, "-m", "reflow_microsandbox"]
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def test_check_config_accepts_the_documented_example_file() -> None:
    result = cli("check-config", str(REPO / "microsandbox.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: bubblewrap")
    assert len(result.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        ("sandbox:\n  memory_mb: lots\n", "sandbox.memory_mb"),
        ("compression:\n  algorithm: lz5\n", "compression.algorithm"),
        ("server:\n  host: 0.0.0.0\n", "auth.tokens"),
        ("sandbox:\n  pool:\n    python:\n      min_instances: 9\n      max_instances: 2\n",
         "min_instances"),
        ("surprise: 1\n", "surprise"),
        ("server: [1, 2\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_check_config_rejects_a_bad_file_naming_the_key(
    tmp_path: Path, content: str, mentions: str
) -> None:
    path = tmp_path / "microsandbox.yaml"
    path.write_text(content)
    result = cli("check-config", str(path))
    assert result.returncode == 2  # as the README says
    assert mentions in result.stderr
    assert result.stdout == ""


def test_check_config_of_a_missing_file_fails(tmp_path: Path) -> None:
    result = cli("check-config", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert "cannot read" in result.stderr


def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"state": {"sqlite_path": str(tmp_path / "run-state.db")},
                        "sandbox": {"memory_mb": 128}})
    )  # fmt: skip
    return path


def test_run_executes_the_seed_example_and_state_persists_between_runs(
    scripts: Path, tmp_path: Path
) -> None:
    config = run_config(tmp_path)
    first = cli("run", str(scripts / "test_actor.py"), "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"status": "success", "counter": 0}
    assert "push test:" in first.stderr  # the 10 KB push was shown as it happened
    second = cli("run", str(scripts / "test_actor.py"), "--config", str(config))
    assert json.loads(second.stdout) == {"status": "success", "counter": 1}


def test_run_parses_inputs_as_json_when_they_parse_else_as_strings(
    scripts: Path, tmp_path: Path
) -> None:
    config = str(run_config(tmp_path))
    numbers = cli("run", str(scripts / "echo.py"), "--input", "data=[1, 2.5]", "--config", config)
    assert json.loads(numbers.stdout) == {"out": [1, 2.5]}
    text = cli("run", str(scripts / "echo.py"), "--input", "data=hello world", "--config", config)
    assert json.loads(text.stdout) == {"out": "hello world"}


def test_run_reports_a_failing_script_clearly_with_a_non_zero_exit(
    scripts: Path, tmp_path: Path
) -> None:
    result = cli("run", str(scripts / "failing.py"), "--config", str(run_config(tmp_path)))
    assert result.returncode == 1
    first_error_line = next(line for line in result.stderr.splitlines() if "error" in line)
    assert first_error_line.startswith("error (script_error): ")
    assert "this actor always fails" in first_error_line
    assert 'raise ValueError("this actor always fails")' in result.stderr  # the traceback
    assert result.stdout == ""


def test_run_refuses_a_malformed_input_and_a_missing_script(tmp_path: Path) -> None:
    missing = cli("run", str(tmp_path / "nope.py"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    malformed = cli("run", str(tmp_path / "nope.py"), "--input", "no-equals-sign")
    assert malformed.returncode != 0 and "PORT=VALUE" in malformed.stderr


def test_run_refuses_an_input_no_actor_could_be_sent(scripts: Path, tmp_path: Path) -> None:
    """A number beyond a double is the author's input, refused before any sandbox runs
    (it used to reach the runner and be blamed on the script as a script_error); NaN
    is not JSON, so it arrives as the string "NaN"."""
    config = str(run_config(tmp_path))
    huge = cli("run", str(scripts / "echo.py"), "--input", "data=1e400", "--config", config)
    assert huge.returncode == 2, huge.stderr
    assert "--input 'data=1e400'" in huge.stderr
    assert "outside the range of a 64-bit float" in huge.stderr
    assert "script_error" not in huge.stderr and huge.stdout == ""
    nan = cli("run", str(scripts / "echo.py"), "--input", "data=NaN", "--config", config)
    assert nan.returncode == 0, nan.stderr
    assert json.loads(nan.stdout) == {"out": "NaN"}


async def test_sigterm_drains_an_in_flight_call_exits_0_and_leaves_no_sandbox_behind(
    scripts: Path, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    data = config_data(scripts, tmp_path, None)
    server = ServerProcess(data, tmp_path / "drain").start()
    server_processes.append(server)
    await server.wait_ready()
    assert server.process is not None
    client = await RawClient.open(server.ws_url)
    try:
        await client.send(
            {"jsonrpc": "2.0", "id": "slow", "method": "process",
             "params": {"actor_id": "slow", "payload": {"seconds": 3}}}
        )  # fmt: skip
        started = await client.recv()
        assert started["params"]["port"] == "started"  # the call is running in a sandbox
        sandboxes = descendants(server.process.pid)
        assert sandboxes, "the server should have sandbox processes below it"
        server.terminate()
        response = await client.recv(timeout=30)
        assert response["id"] == "slow"
        assert response["result"] == {"outputs": {"slept": 3}}
    finally:
        await client.close()
    code = await asyncio.to_thread(server.wait, 60)
    assert code == 0, server.log
    assert [pid for pid in sandboxes if alive(pid)] == []


def test_check_scripts_lists_the_actors_and_names_each_refused_file(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "good.py").write_text("@actor\ndef process(context):\n    return {}\n")
    (scripts / "literal.js").write_text(
        "const metadata = {component: 'literal_js', inports: ['a',],};\n"
        "module.exports = { process: async () => ({}) };\n"
    )
    (scripts / "computed.js").write_text(
        "const NAME = 'x';\nconst metadata = {component: NAME};\nasync function run() {}\n"
    )
    config = tmp_path / "microsandbox.yaml"
    config.write_text(yaml.safe_dump({"scripts": {"folders": [str(scripts)]}}))
    result = cli("check-scripts", "--config", str(config))
    assert result.returncode == 1
    assert "good" in result.stdout and "literal_js" in result.stdout
    assert "refused  computed.js: `const metadata` must be an object literal" in result.stderr
    (scripts / "computed.js").unlink()
    assert cli("check-scripts", "--config", str(config)).returncode == 0


def test_run_without_a_config_keeps_its_state_out_of_the_current_folder(
    scripts: Path, tmp_path: Path
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    home = tmp_path / "home"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MICROSANDBOX_", "XDG_"))
    }
    env["HOME"] = str(home)
    for expected in (1, 2):  # the state persists between runs
        result = subprocess.run(
            [*CLI, "run", str(scripts / "sequence.py"), "--input", "n=1"],
            capture_output=True, text=True, timeout=120, env=env, cwd=work,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"seen": expected}
    assert list(work.iterdir()) == []  # no microsandbox-state.db(.locks) left here
    state = home / ".local" / "state" / "reflow-microsandbox"
    assert {path.name for path in state.iterdir()} >= {"run-state.db", "run-state.db.locks"}


def test_check_config_warns_about_a_script_folder_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    config = tmp_path / "microsandbox.yaml"
    config.write_text(yaml.safe_dump({"scripts": {"folders": ["here", "not-there"]}}))
    result = cli("check-config", str(config))
    assert result.returncode == 0 and result.stdout.startswith("ok: ")
    assert "warning: scripts.folders[1]" in result.stderr
    assert str(tmp_path / "not-there") in result.stderr
    assert "folders[0]" not in result.stderr


def _env_with(**variables: str) -> dict[str, str]:
    """This process's environment without its MICROSANDBOX_* variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSANDBOX_")}
    return {**env, **variables}


def test_check_config_warns_of_an_unknown_variable_naming_the_key_it_probably_meant() -> None:
    example = str(REPO / "microsandbox.example.yaml")
    result = cli("check-config", example, env=_env_with(
        MICROSANDBOX_POOL_PYTHON_MAX="7", MICROSANDBOX_ZZQX="1"))
    assert result.returncode == 0 and result.stdout.startswith("ok: "), result.stderr
    warnings = result.stderr.splitlines()
    assert warnings == [
        f"{example}: warning: unknown environment variable MICROSANDBOX_POOL_PYTHON_MAX is "
        "ignored (it names no config key); did you mean "
        "MICROSANDBOX_SANDBOX_POOL_PYTHON_MAX_INSTANCES (sandbox.pool.python.max_instances)?",
        f"{example}: warning: unknown environment variable MICROSANDBOX_ZZQX is ignored "
        "(it names no config key)",
    ]
    # And the override it meant really was not applied.
    assert re.search(r"python \d+-7,", result.stdout) is None, result.stdout


def test_check_config_is_silent_about_known_keys_and_the_deployment_helpers() -> None:
    result = cli("check-config", str(REPO / "microsandbox.example.yaml"), env=_env_with(
        MICROSANDBOX_SANDBOX_POOL_PYTHON_MAX_INSTANCES="7",
        MICROSANDBOX_LB_PORT="8080",
        MICROSANDBOX_DEPENDENCY_CACHE="/var/cache/microsandbox/functions",
        MICROSANDBOX_HTTP_PORT="5555",
        MICROSANDBOX_REPLICAS="2",
    ))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.search(r"python \d+-7,", result.stdout), result.stdout  # the key applied


def test_check_config_warns_of_unknown_variables_also_when_the_file_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "microsandbox.yaml"
    path.write_text("sandbox:\n  memory_mb: lots\n")
    result = cli("check-config", str(path), env=_env_with(MICROSANDBOX_REDIS_ULR="redis://x"))
    assert result.returncode == 2
    assert "MICROSANDBOX_REDIS_ULR is ignored" in result.stderr
    assert "did you mean MICROSANDBOX_REDIS_URL (redis.url)?" in result.stderr
    assert "sandbox.memory_mb" in result.stderr


def test_serve_logs_each_unknown_variable_at_start(tmp_path: Path) -> None:
    """The server's own startup log carries the warning; here the start then fails on an
    HTTP port already taken, so the server need not be stopped."""
    config = tmp_path / "microsandbox.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.write_text(yaml.safe_dump({
            "server": {"http_port": taken.getsockname()[1]},
            "state": {"sqlite_path": str(tmp_path / "state.db")},
            "scripts": {"folders": [str(tmp_path)]},
            "sandbox": {"pool": {"python": {"min_instances": 0},
                                 "nodejs": {"min_instances": 0}}},
        }))
        result = cli("serve", "--config", str(config), env=_env_with(
            MICROSANDBOX_POOL_PYTHON_MAX="4", MICROSANDBOX_LB_PORT="8080"))
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "MICROSANDBOX_" in line]
    assert "WARNING reflow_microsandbox.config: unknown environment variable " \
           "MICROSANDBOX_POOL_PYTHON_MAX is ignored" in line
    assert "did you mean MICROSANDBOX_SANDBOX_POOL_PYTHON_MAX_INSTANCES" in line
