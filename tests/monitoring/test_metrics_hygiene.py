"""Metric hygiene: every component's real /metrics passes ``promtool check metrics``, and
no label of the control plane can grow without bound.

The control plane's exposition must be clean. The exporters are Debian's builds of
upstream projects whose names we cannot change: their findings may only be of the naming
kinds listed in UPSTREAM_NAMING (camelCase from /proc field names, counters without
``_total``, non-base units); any other finding (a parse error, a missing HELP, a
duplicate) fails.

Cardinality: the control plane was driven with distinct random method names, actor
names and namespaces (tests/monitoring/components.py). None may appear in /metrics, and
every label of every series must be one of the labels documented in docs/monitoring.md
("Labels and their values") with a value from its closed set.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reflow_microsandbox.sandbox import enforced
from reflow_microsandbox.vocabulary import LANGUAGES, ErrorKind

from .conftest import Scraped

UPSTREAM_NAMING = (
    "metric names should be written in 'snake_case' not 'camelCase'",
    'counter metrics should have "_total" suffix',
    'non-counter metrics should not have "_total" suffix',
    "use base unit",
    "metric names should not contain abbreviated units",
)

KINDS = set(get_args(ErrorKind))
# Why the pool throws a sandbox away besides an error kind (control/pool.py).
POOL_REASONS = {"shutdown", "unload", "reloaded", "evicted", "recycled", "idle", "crashed",
                "load_failed", "cancelled"}
# The control plane's labels and the closed set of values each may take (docs/monitoring.md).
LABELS = {
    "language": lambda v: v in LANGUAGES,
    "state": lambda v: v in {"warm", "busy", "idle"},
    "outcome": lambda v: v in KINDS | {"ok", "error"},
    "reason": lambda v: v in KINDS | POOL_REASONS,
    "op": lambda v: v in {"get", "set", "delete", "increment", "commit"},
    # A registered method's name, "unknown" for any other, "invalid" for unparsable frames.
    "method": lambda v: re.fullmatch(r"[a-z][a-z_./]{0,31}", v) is not None,
    # "ok" or a JSON-RPC error code (the reserved range -32768..-32000).
    "code": lambda v: v == "ok" or (re.fullmatch(r"-\d+", v) is not None
                                    and -32768 <= int(v) <= -32000),
    "le": lambda v: True,  # histogram buckets: fixed in control/metrics.py
    # microsandbox_sandbox_limits_enforced (control/sandbox/enforced.py)
    "backend": lambda v: v in {"bubblewrap", "docker"},
    "limit": lambda v: v in enforced.LIMITS,
    "mechanism": lambda v: v in enforced.MECHANISMS,
}


def _promtool_check_metrics(text: str) -> tuple[int, list[str]]:
    result = subprocess.run(["promtool", "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=60, check=False)
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, findings


def test_control_plane_metrics_pass_promtool_check_metrics(scraped: Scraped) -> None:
    code, findings = _promtool_check_metrics(scraped.control_plane)
    assert (code, findings) == (0, [])


@pytest.mark.parametrize("component", ["redis", "nginx", "node"])
def test_exporter_metrics_pass_promtool_but_for_upstream_naming(
    scraped: Scraped, component: str
) -> None:
    text = getattr(scraped, component)
    code, findings = _promtool_check_metrics(text)
    assert code in (0, 3), findings  # 3: lint findings only; 1 would be a parse error
    other = [f for f in findings if not any(kind in f for kind in UPSTREAM_NAMING)]
    assert other == [], f"{component} exporter: findings beyond upstream naming"


def test_promtool_check_metrics_catches_what_it_should() -> None:
    """The check above is not vacuous: a counter without HELP is reported."""
    code, findings = _promtool_check_metrics("# TYPE x counter\nx 1\n")
    assert code != 0 and any("no help text" in f for f in findings), findings


def test_no_flooded_name_becomes_a_label_value(scraped: Scraped) -> None:
    assert len(scraped.flood) >= 100
    leaked = [name for name in scraped.flood if name in scraped.control_plane]
    assert leaked == []


def test_every_control_plane_label_is_documented_and_closed(scraped: Scraped) -> None:
    problems = []
    series = 0
    for family in text_string_to_metric_families(scraped.control_plane):
        for sample in family.samples:
            series += 1
            for label, value in sample.labels.items():
                check = LABELS.get(label)
                if check is None:
                    problems.append(f"{sample.name}: undocumented label {label}")
                elif not check(value):
                    problems.append(f"{sample.name}: {label}={value!r} is outside its set")
    assert problems == []
    # The flood added no series: a few hundred at most, whatever the traffic.
    assert series < 400, series


def test_every_documented_label_is_in_the_guide() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    missing = [label for label in LABELS if f"`{label}`" not in guide]
    assert missing == []
