"""The sans-I/O parts of the deploy-then-call API: request parsing, dependency checks,
content digests, WebSocket path routing and Basic credentials (a fast layer beside
the end-to-end tests in tests/functions/)."""

from __future__ import annotations

import base64
import json

import pytest

from reflow_microsandbox.functions import locks
from reflow_microsandbox.functions.dependencies import DependencyError, normalise, set_key
from reflow_microsandbox.functions.model import (
    DeployError,
    FunctionCode,
    FunctionRecord,
    check_runtime,
    parse_deploy,
    script_filename,
)
from reflow_microsandbox.functions.routes import function_route
from reflow_microsandbox.transports.auth import TokenAuth, basic_token

FID = "fn-" + "ab" * 16


def test_a_deploy_body_as_reflow_sends_it_parses_and_the_rest_is_refused() -> None:
    body = {
        "name": "m", "runtime": "python", "code": "x", "handler": "m",
        "timeout_seconds": 300, "dependencies": None, "extra": "ignored",
    }  # fmt: skip
    request = parse_deploy(json.dumps(body).encode())
    assert (request.name, request.timeout_seconds, request.dependencies) == ("m", 300, None)
    minimal = parse_deploy(b'{"name": "m", "runtime": "nodejs", "code": "x"}')
    assert minimal.handler is None and minimal.timeout_seconds is None
    for bad, words in (
        (b"\xff", "not JSON"),
        (b"null", "JSON object"),
        (b'{"name": "m", "runtime": "python"}', "code"),
        (b'{"name": "m", "runtime": "python", "code": 5}', "code"),
        (b'{"name": "", "runtime": "python", "code": "x"}', "name"),
        (b'{"name": "m", "runtime": "python", "code": "x", "timeout_seconds": 1.5}', "timeout"),
        (b'{"name": "m", "runtime": "python", "code": "x", "timeout_seconds": true}', "timeout"),
        (b'{"name": "m", "runtime": "python", "code": "x", "dependencies": {"a": 1}}', "depend"),
    ):
        with pytest.raises(DeployError) as error:
            parse_deploy(bad)
        assert error.value.status == 400 and words in error.value.message, bad


def test_only_reflows_two_runtimes_are_accepted() -> None:
    assert check_runtime("python") == "python"
    assert check_runtime("nodejs") == "nodejs"
    for other in ("Python", "node", "deno", ""):
        with pytest.raises(DeployError, match="allowed: python, nodejs"):
            check_runtime(other)


def test_dependencies_normalise_to_one_set_and_refuse_what_is_not_a_registry_package() -> None:
    assert normalise("python", {"Six": "*", "attrs": ">=23,<30", "idna": "3.7"}, 10) == (
        ("attrs", "<30,>=23"),
        ("idna", "==3.7"),
        ("six", ""),
    )
    assert set_key("python", normalise("python", {"Six": "*"}, 5)) == set_key(
        "python", normalise("python", {"six": "latest"}, 5)
    )
    assert normalise("nodejs", {"@scope/pkg": "^1.2.0", "is-number": "*"}, 5) == (
        ("@scope/pkg", "^1.2.0"),
        ("is-number", "*"),
    )
    refused = [
        ("python", {"six": "--index-url http://evil/"}),
        ("python", {"./local/dir": "*"}),
        ("python", {"pkg @ https://evil/pkg.whl": "*"}),
        ("python", {"six": "==1; os_name=='nt'"}),
        ("python", {"Six": "*", "six": "1.0"}),
        ("nodejs", {"is-number": "file:../x"}),
        ("nodejs", {"is-number": "github:user/repo"}),
        ("nodejs", {"is-number": "npm:evil@1"}),
        ("nodejs", {"is-number": "https://evil/x.tgz"}),
        ("nodejs", {"is-number": "-g"}),
        ("nodejs", {"../x": "*"}),
        ("nodejs", {".hidden": "*"}),
        ("python", {f"p{i}": "*" for i in range(4)}),
    ]
    for language, dependencies in refused:
        with pytest.raises(DependencyError):
            normalise(language, dependencies, 3)  # type: ignore[arg-type]


def test_code_is_addressed_by_its_content_and_a_changed_record_is_refused() -> None:
    code = FunctionCode("python", "def process(c): pass\n", (("six", ""),))
    again = FunctionCode("python", "def process(c): pass\n", (("six", ""),))
    assert code.digest == again.digest
    assert FunctionCode("nodejs", code.code, code.dependencies).digest != code.digest
    assert FunctionCode.from_bytes(code.to_bytes(), code.digest) == code
    tampered = code.to_bytes().replace(b"pass", b"boom")
    with pytest.raises(ValueError, match="does not match"):
        FunctionCode.from_bytes(tampered, code.digest)


def test_a_record_round_trips_and_its_status_has_every_field_reflow_requires() -> None:
    record = FunctionRecord(FID, "m", "python", "m", "d" * 64, 300, "ready", "", 7, 1)
    assert FunctionRecord.from_fields(record.to_fields()) == record
    assert record.status() == {
        "id": FID, "name": "m", "runtime": "python", "state": "ready", "vmId": "",
        "invocationCount": 7,
    }  # fmt: skip
    failed = record.with_state("failed", "pip failed")
    assert failed.status()["error"] == "pip failed"


def test_script_filenames_are_safe() -> None:
    assert script_filename("multiplier", "python") == "multiplier.py"
    assert script_filename("../../etc/x y", "nodejs") == "etc_x_y.js"
    assert script_filename("...", "python") == "function.py"


def test_a_websocket_path_names_a_function_by_its_last_segment() -> None:
    assert function_route(f"/ws/{FID}") is not None
    route = function_route(f"/ws/tok%2Fen/{FID}")
    assert route is not None and route.function_id == FID and route.path_token == "tok/en"
    only = function_route(f"/{FID}?token=t")
    assert only is not None and only.path_token is None
    for other in ("/", "/?actor=x", f"/ws/{FID}/x", f"/ws/{FID}0", "/ws/fn-ABC"):
        assert function_route(other) is None, other


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_present_the_password_or_a_lone_user_name() -> None:
    assert basic_token(_basic("reflow:tok")) == "tok"
    assert basic_token(_basic("tok:")) == "tok"
    assert basic_token(_basic("tok")) == "tok"
    assert basic_token(_basic(":")) is None
    assert basic_token("Basic !!!") is None
    assert basic_token("Bearer tok") is None
    auth = TokenAuth(["tok"])
    assert auth.allows_request({"Authorization": _basic("anyone:tok")})
    assert not auth.allows_request({"Authorization": _basic("tok:wrong")})
    assert TokenAuth([]).allows_request({})


def test_a_stored_lock_is_replayed_only_when_it_names_registry_packages() -> None:
    report = {
        "install": [
            {
                "metadata": {"name": "inflection", "version": "0.5.1"},
                "download_info": {"archive_info": {"hashes": {"sha256": "f" * 64}}},
            }
        ]
    }
    lines, hashed = locks.pip_requirements(locks.pip_lock(report))
    assert (lines, hashed) == ([f"inflection==0.5.1 --hash=sha256:{'f' * 64}"], True)
    for name, version in (("--index-url=x", "1"), ("x", "1; import os"), ("a b", "1")):
        bad = json.dumps({"kind": "pip", "packages": [{"name": name, "version": version}]})
        with pytest.raises(ValueError):
            locks.pip_requirements(bad.encode())

    pairs = (("is-number", "*"),)
    entry = {"version": "7.0.0", "resolved": "https://registry.npmjs.org/is-number/-/x.tgz"}
    good = {"packages": {"": {"dependencies": {"is-number": "*"}}, "node_modules/is-number": entry}}
    package, package_lock = locks.npm_files(locks.npm_lock(good), pairs)
    assert package["dependencies"] == {"is-number": "*"} and package_lock == good
    for entries in (
        {"": {"dependencies": {"evil": "*"}}},
        {"": {"dependencies": {"is-number": "*"}}, "node_modules/x": {"link": True}},
        {"": {"dependencies": {"is-number": "*"}},
         "node_modules/x": {"resolved": "git+ssh://git@example.org/x.git"}},
        {"": {"dependencies": {"is-number": "*"}}, "../outside": {"version": "1.0.0"}},
    ):  # fmt: skip
        with pytest.raises(ValueError):
            locks.npm_files(locks.npm_lock({"packages": entries}), pairs)
