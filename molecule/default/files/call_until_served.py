#!/usr/bin/env python3
"""Call an actor through the balancer until a given node has served one of the calls.

verify.yml uses it to wait for a restarted node to rejoin: nginx keeps a failed node
out for fail_timeout, then tries it again. A node "served" a call when its
``microsandbox_rpc_requests_total{method="process",code="ok"}`` went up. Every call
must succeed meanwhile. Runs beside reflow_client.py with the control plane's Python.

    call_until_served.py WS_URL ACTOR METRICS_URL [--tries N]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request

from reflow_client import call

METRIC = "microsandbox_rpc_requests_total{"


def served_calls(metrics_url: str) -> float:
    """The node's count of successful process calls (0 before the first)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(METRIC) and 'method="process"' in line and 'code="ok"' in line
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("actor")
    parser.add_argument("metrics_url")
    parser.add_argument("--tries", type=int, default=40)
    args = parser.parse_args()
    baseline = served_calls(args.metrics_url)
    for attempt in range(1, args.tries + 1):
        (result,) = call(args.url, args.actor)
        if result.error is not None:
            print(f"call {attempt} failed: {result.error}", file=sys.stderr)
            return 1
        if served_calls(args.metrics_url) > baseline:
            print(f"served by the node after {attempt} calls")
            return 0
        time.sleep(1)
    print(f"the node served none of {args.tries} calls", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
