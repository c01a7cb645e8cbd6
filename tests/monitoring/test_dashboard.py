"""The Grafana dashboard: current, valid PromQL, and every metric it names is real.

monitoring/grafana/microsandbox.json must be what monitoring/dashboard.py builds; every
panel's expressions (Grafana's variables filled in) pass ``promtool check rules``; and
every metric they name appears in the real /metrics of the component it comes from, run
here (tests/monitoring/components.py), with the labels the expression relies on.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import dashboard

from .alert_tests import alert_rules
from .conftest import Rendered, Scraped
from .exposition import TARGET_LABELS, exported, grouping_labels, selectors, substitute

PREFIXES = {"microsandbox_": "control plane", "redis_": "redis exporter",
            "nginx_": "nginx exporter", "node_": "node exporter"}
# Series Prometheus makes itself for every target; not exported by any component.
SYNTHETIC = {"up"}


def _committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dashboard.OUTPUT.read_text())
    return data


def _panel_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(panel["title"], target["expr"])
            for panel in _committed()["panels"] if panel["type"] != "row"
            for target in panel["targets"]]


def test_committed_dashboard_is_what_the_generator_builds() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render(), (
        "monitoring/grafana/microsandbox.json is stale: run python -m monitoring.dashboard"
    )


def test_dashboard_panels_are_well_formed_for_grafana() -> None:
    data = _committed()
    panels = data["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "node", "host"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["legendFormat"] for t in panel["targets"]), panel["title"]
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert x >= 0 and x + w <= 24, panel["title"]


def test_dashboard_covers_what_operators_look_for() -> None:
    text = " ".join(expr for _, expr in _panel_queries())
    for metric in (
        "microsandbox_rpc_requests_total",                  # calls/s, errors by method, code
        "microsandbox_execution_duration_seconds_count",    # errors by kind
        "microsandbox_execution_duration_seconds_bucket",   # latency percentiles
        "microsandbox_active_sandboxes",                    # pool occupancy per language
        "microsandbox_sandbox_start_seconds_count",         # sandbox starts
        "microsandbox_sandboxes_killed_total",              # kills by reason
        "microsandbox_state_errors_total",                  # state errors
        "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_evicted_keys_total",
        "nginx_up", "nginx_connections_active",             # balancer health
        "node_cpu_seconds_total", "node_memory_MemAvailable_bytes",
    ):
        assert metric in text, f"no panel shows {metric}"


def test_every_panel_expression_passes_promtool(tmp_path: Path) -> None:
    queries = _panel_queries()
    assert len(queries) >= 30
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": substitute(expr)}
        for index, (_, expr) in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def _check_names(where: str, expr: str, components: dict[str, dict[str, set[str]]]) -> list[str]:
    """What is wrong with the metrics and labels ``expr`` relies on, as messages."""
    problems: list[str] = []
    labels_seen: set[str] = set()
    all_known = True
    for selector in selectors(substitute(expr)):
        if selector.metric in SYNTHETIC:
            labels_seen |= {"job", "instance"}
            continue
        component = next((c for p, c in PREFIXES.items() if selector.metric.startswith(p)), None)
        if component is None:
            problems.append(f"{where}: {selector.metric} comes from no component")
            continue
        names = components[component]
        if selector.metric not in names:
            problems.append(f"{where}: the {component} does not export {selector.metric}")
            continue
        labels = names[selector.metric]
        if not labels and selector.labels - TARGET_LABELS:
            all_known = False  # declared, but no series yet: its labels cannot be seen
            continue
        labels_seen |= labels
        missing = selector.labels - TARGET_LABELS - labels
        if missing:
            problems.append(f"{where}: {selector.metric} has no label {sorted(missing)}")
    ungrouped = grouping_labels(expr) - TARGET_LABELS - labels_seen
    if all_known and ungrouped:
        problems.append(f"{where}: groups by {sorted(ungrouped)}, which no metric of it has")
    return problems


def _components(scraped: Scraped) -> dict[str, dict[str, set[str]]]:
    return {name: exported(text) for name, text in scraped.by_component().items()}


def test_every_metric_a_panel_names_is_exported_by_its_component(scraped: Scraped) -> None:
    components = _components(scraped)
    problems = [p for title, expr in _panel_queries()
                for p in _check_names(f"panel {title!r}", expr, components)]
    assert problems == []


def test_every_metric_an_alert_names_is_exported_by_its_component(
    scraped: Scraped, rendered_local: Rendered
) -> None:
    components = _components(scraped)
    rules = alert_rules(rendered_local.dir / "microsandbox-alerts.yml")
    problems = [p for name, rule in rules.items()
                for p in _check_names(f"alert {name}", rule["expr"], components)]
    assert problems == []


@pytest.mark.parametrize("name", ["node", "host"])
def test_variables_read_labels_the_scrape_configuration_sets(
    name: str, rendered_local: Rendered
) -> None:
    config = yaml.safe_load((rendered_local.dir / "prometheus.yml").read_text())
    target_labels = {label for job in config["scrape_configs"]
                     for group in job.get("static_configs", [])
                     for label in group.get("labels", {})}
    assert name in target_labels
