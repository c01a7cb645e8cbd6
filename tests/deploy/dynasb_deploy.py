#!/usr/bin/env python3
"""Deploys, polls and undeploys a function the way Reflow's deploy-then-call client does.

Standard library only, so it runs on a cluster node with any Python (molecule verify)
and from the compose test. ``API_URL`` may carry ``user:TOKEN@`` (sent as HTTP Basic
auth, as Reflow does); calls then go over ``tests/deploy/reflow_client.py`` to
``<ws base>/<function_id>``.

    dynasb_deploy.py deploy API_URL [--name N] [--runtime python|nodejs] [--code-file F]
        prints the function id once its status is ready (polled every 500 ms)
    dynasb_deploy.py status API_URL FUNCTION_ID      prints the status JSON
    dynasb_deploy.py undeploy API_URL FUNCTION_ID

Without ``--code-file`` the function is a small doubler that pushes ``progress`` and
counts its calls in state.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

SAMPLE = {
    "python": (
        "@actor\n"
        "async def process(context):\n"
        "    await context.send_output('progress', 'doubling')\n"
        "    calls = await context.increment_state('calls')\n"
        "    return {'output': context.get_input('input', 0) * 2, 'calls': calls}\n"
    ),
    "nodejs": (
        "async function process(context) {\n"
        "  await context.sendOutput('progress', 'doubling');\n"
        "  const calls = await context.incrementState('calls');\n"
        "  return {output: context.getInput('input', 0) * 2, calls};\n"
        "}\nmodule.exports = {process};\n"
    ),
}


def _split(api_url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(api_url)
    headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        host = parts.hostname or ""
        parts = parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host)
    return urlunsplit(parts).rstrip("/"), headers


def request(api_url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    base, headers = _split(api_url)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def deploy(api_url: str, name: str, runtime: str, code: str, timeout: int = 300) -> str:
    _, body = request(api_url, "POST", "/api/v1/functions", {
        "name": name, "runtime": runtime, "code": code, "handler": name,
        "timeout_seconds": timeout, "dependencies": None,
    })  # fmt: skip
    if not body.get("success"):
        raise SystemExit(f"deploy failed: {body.get('error')}")
    function_id = str(body["function_id"])
    deadline = time.monotonic() + timeout
    while True:
        _, status = request(api_url, "GET", f"/api/v1/functions/{function_id}")
        state = status["state"]
        if state in ("ready", "running"):
            return function_id
        if state not in ("deploying", "starting", "booting", "stopping"):
            raise SystemExit(f"function {function_id} is {state}: {status}")
        if time.monotonic() > deadline:
            raise SystemExit(f"function {function_id} not ready within {timeout} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["deploy", "status", "undeploy"])
    parser.add_argument("api_url")
    parser.add_argument("function_id", nargs="?")
    parser.add_argument("--name", default="doubler")
    parser.add_argument("--runtime", default="python", choices=sorted(SAMPLE))
    parser.add_argument("--code-file")
    args = parser.parse_args(argv)
    if args.command == "deploy":
        code = SAMPLE[args.runtime]
        if args.code_file:
            with open(args.code_file, encoding="utf-8") as file:
                code = file.read()
        print(deploy(args.api_url, args.name, args.runtime, code))
        return 0
    if not args.function_id:
        parser.error("status and undeploy need a function id")
    path = f"/api/v1/functions/{args.function_id}"
    if args.command == "status":
        _, body = request(args.api_url, "GET", path)
    else:
        _, body = request(args.api_url, "POST", path + "/undeploy")
    print(json.dumps(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
