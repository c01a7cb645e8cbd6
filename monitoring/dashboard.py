"""The operators' Grafana dashboard, built with Grafana's own Python SDK.

    .venv/bin/python -m monitoring.dashboard              # rewrite monitoring/grafana/microsandbox.json
    .venv/bin/python -m monitoring.dashboard --check      # exit 1 if the committed file is stale

Every panel is declared once in :data:`ROWS` (title, unit, PromQL, legend) and built
into Grafana's dashboard model by ``grafana-foundation-sdk`` (Grafana Labs' generated
builders, schema of Grafana 10.1). The JSON is committed so that operators import it
without Python (Grafana: Dashboards > New > Import, pick the Prometheus data source);
tests/monitoring/test_dashboard.py regenerates and compares it, checks every
expression with ``promtool check rules`` and that every metric it names is exported
by the component it comes from.

Grafana variables in the expressions: ``$datasource`` (the Prometheus data source),
``$node`` (sandbox nodes, the ``node`` label of the ``microsandbox`` job), ``$host``
(hosts, the ``host`` label of the exporter jobs) and Grafana's ``$__rate_interval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
)

OUTPUT = Path(__file__).with_name("grafana") / "microsandbox.json"
UID = "reflow-microsandbox"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Selectors every expression uses, so the variables filter every panel alike.
NODE = 'job="microsandbox", node=~"$node"'
HOST = 'host=~"$host"'
DISK = 'fstype!~"tmpfs|ramfs|squashfs|overlay"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and the legend of its series."""

    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    """A panel: what it shows (description), its unit and queries; ``stat`` for numbers."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    stat: bool = False
    stacked: bool = False
    width: int = 12


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...] = field(default_factory=tuple)


def _quantiles(metric: str, by: str, selector: str) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    )


ROWS: tuple[RowSpec, ...] = (
    RowSpec("Calls (control plane)", (
        PanelSpec(
            "Calls per second by method",
            "JSON-RPC calls answered per second, by method (process, load, list, unload; "
            "unknown for any other name, invalid for frames that never reached a method).",
            "reqps",
            (Query(f"sum by (method) (rate(microsandbox_rpc_requests_total{{{NODE}}}[{RATE}]))",
                   "{{method}}"),),
        ),
        PanelSpec(
            "Errors per second by method and code",
            "JSON-RPC error answers per second by method and code: -32001 timeout, -32002 "
            "memory, -32003 crashed, -32004 output too large, -32005 script error, -32007 pool "
            "exhausted, -32008 state error, -32009 unavailable, -32010 not found, -326xx/-32700 "
            "protocol errors.",
            "reqps",
            (Query(f'sum by (method, code) (rate(microsandbox_rpc_requests_total{{{NODE}, code!="ok"}}[{RATE}]))',
                   "{{method}} {{code}}"),),
        ),
        PanelSpec(
            "Failed executions by kind",
            "Actor executions that did not succeed, per second, by kind (data.kind of the error).",
            "ops",
            (Query(f'sum by (outcome) (rate(microsandbox_execution_duration_seconds_count{{{NODE}, outcome!="ok"}}[{RATE}]))',
                   "{{outcome}}"),),
            stacked=True,
        ),
        PanelSpec(
            "Execution latency percentiles",
            "Wall time of process calls, from sandbox acquisition to outputs, by language.",
            "s",
            _quantiles("microsandbox_execution_duration_seconds", "language", NODE),
        ),
        PanelSpec(
            "Wait for a sandbox (p95)",
            "How long calls wait for a sandbox bound to their actor; seconds here mean the "
            "pool is exhausted (MicrosandboxPoolExhausted).",
            "s",
            (Query(f"histogram_quantile(0.95, sum by (le, language) (rate(microsandbox_pool_acquire_wait_seconds_bucket{{{NODE}}}[{RATE}])))",
                   "p95 {{language}}"),),
        ),
        PanelSpec(
            "Open WebSocket connections",
            "Reflow keeps one connection per actor instance.",
            "short",
            (Query(f"sum by (node) (microsandbox_ws_connections{{{NODE}}})", "{{node}}"),),
        ),
    )),
    RowSpec("Sandboxes (control plane)", (
        PanelSpec(
            "Pool occupancy per language",
            "Live sandboxes by language and state: warm (ready, unbound), idle (bound to an "
            "actor, free), busy (in a call).",
            "short",
            (Query(f"sum by (language, state) (microsandbox_active_sandboxes{{{NODE}}})",
                   "{{language}} {{state}}"),),
            stacked=True,
        ),
        PanelSpec(
            "Sandbox memory",
            "Resident memory of all live sandboxes, by language.",
            "bytes",
            (Query(f"sum by (language) (microsandbox_memory_usage_bytes{{{NODE}}})", "{{language}}"),),
        ),
        PanelSpec(
            "Sandbox starts per second",
            "Sandboxes started (warming, growth, replacements), by language.",
            "ops",
            (Query(f"sum by (language) (rate(microsandbox_sandbox_start_seconds_count{{{NODE}}}[{RATE}]))",
                   "{{language}}"),),
        ),
        PanelSpec(
            "Sandbox start time",
            "From spawn until the runner is ready, by language.",
            "s",
            _quantiles("microsandbox_sandbox_start_seconds", "language", NODE),
        ),
        PanelSpec(
            "Sandbox kills by reason",
            "Sandboxes thrown away per second by reason: limits (timeout, memory, crashed, "
            "output_too_large), recycling (recycled, idle, evicted), unload/reloaded, shutdown.",
            "ops",
            (Query(f"sum by (reason) (rate(microsandbox_sandboxes_killed_total{{{NODE}}}[{RATE}]))",
                   "{{reason}}"),),
            stacked=True,
            width=24,
        ),
    )),
    RowSpec("Actor state (control plane)", (
        PanelSpec(
            "State operations per second",
            "get/set/delete/increment requests from scripts, and commits, per second.",
            "ops",
            (Query(f"sum by (op) (rate(microsandbox_state_operations_total{{{NODE}}}[{RATE}]))",
                   "{{op}}"),),
        ),
        PanelSpec(
            "State errors per second",
            "Failed state reads, writes and commits (Redis unreachable, full, or refusing writes).",
            "ops",
            (Query(f"sum by (node) (rate(microsandbox_state_errors_total{{{NODE}}}[{RATE}]))",
                   "{{node}}"),),
        ),
    )),
    RowSpec("Redis (redis exporter)", (
        PanelSpec(
            "Redis memory against maxmemory",
            "Used memory and the maxmemory ceiling: with noeviction, writes fail at the ceiling.",
            "bytes",
            (Query(f'redis_memory_used_bytes{{job="redis", {HOST}}}', "used {{host}}"),
             Query(f'redis_memory_max_bytes{{job="redis", {HOST}}}', "maxmemory {{host}}")),
        ),
        PanelSpec(
            "Redis evictions and refused commands",
            "Evicted keys (actor state deleted: only with an eviction policy) and error "
            "replies per second by error (OOM: maxmemory reached; MISCONF: persistence failing).",
            "ops",
            (Query(f'sum by (host) (rate(redis_evicted_keys_total{{job="redis", {HOST}}}[{RATE}]))',
                   "evicted {{host}}"),
             Query(f'sum by (host, err) (rate(redis_errors_total{{job="redis", {HOST}}}[{RATE}]))',
                   "{{err}} {{host}}")),
        ),
        PanelSpec(
            "Redis clients",
            "Connected clients (each node keeps a pool) and rejected connections per second.",
            "short",
            (Query(f'redis_connected_clients{{job="redis", {HOST}}}', "connected {{host}}"),
             Query(f'rate(redis_rejected_connections_total{{job="redis", {HOST}}}[{RATE}])',
                   "rejected/s {{host}}")),
        ),
        PanelSpec(
            "Redis up and persistence",
            "1 = ok. redis_up: the exporter reaches Redis; last RDB save, AOF write and AOF "
            "rewrite status (a failed save or write makes Redis refuse writes).",
            "short",
            (Query(f'redis_up{{job="redis", {HOST}}}', "up {{host}}"),
             Query(f'redis_rdb_last_bgsave_status{{job="redis", {HOST}}}', "rdb save {{host}}"),
             Query(f'redis_aof_last_write_status{{job="redis", {HOST}}}', "aof write {{host}}"),
             Query(f'redis_aof_last_bgrewrite_status{{job="redis", {HOST}}}', "aof rewrite {{host}}")),
            stat=True,
        ),
    )),
    RowSpec("Balancer (nginx exporter)", (
        PanelSpec(
            "Upstream health: sandbox nodes answering",
            "nginx OSS exports no per-upstream health. Its upstreams are the sandbox nodes: "
            "this counts the nodes whose metrics endpoint answers Prometheus, against all "
            "nodes, beside whether each balancer answers (nginx_up). 0 nodes up: every call "
            "through the balancer fails (MicrosandboxBalancerNoHealthyUpstream).",
            "short",
            (Query('sum(up{job="microsandbox"})', "nodes up"),
             Query('count(up{job="microsandbox"})', "nodes"),
             Query(f'nginx_up{{job="nginx", {HOST}}}', "balancer up {{host}}")),
            stat=True,
        ),
        PanelSpec(
            "Balancer connections",
            "Client connections by state (WebSocket connections stay active for their lifetime).",
            "short",
            (Query(f'nginx_connections_active{{job="nginx", {HOST}}}', "active {{host}}"),
             Query(f'nginx_connections_reading{{job="nginx", {HOST}}}', "reading {{host}}"),
             Query(f'nginx_connections_writing{{job="nginx", {HOST}}}', "writing {{host}}"),
             Query(f'nginx_connections_waiting{{job="nginx", {HOST}}}', "waiting {{host}}")),
        ),
        PanelSpec(
            "Balancer requests and dropped connections",
            "Requests per second, and accepted minus handled connections per second "
            "(above 0: nginx ran out of worker connections).",
            "reqps",
            (Query(f'rate(nginx_http_requests_total{{job="nginx", {HOST}}}[{RATE}])',
                   "requests {{host}}"),
             Query(f'rate(nginx_connections_accepted{{job="nginx", {HOST}}}[{RATE}])'
                   f' - rate(nginx_connections_handled{{job="nginx", {HOST}}}[{RATE}])',
                   "dropped {{host}}")),
            width=24,
        ),
    )),
    RowSpec("Hosts (node exporter)", (
        PanelSpec(
            "CPU busy",
            "Fraction of CPU time not idle, per host.",
            "percentunit",
            (Query(f'1 - avg by (host) (rate(node_cpu_seconds_total{{job="node", {HOST}, mode="idle"}}[{RATE}]))',
                   "{{host}}"),),
        ),
        PanelSpec(
            "Memory available",
            "Fraction of memory available without swapping, per host.",
            "percentunit",
            (Query(f'node_memory_MemAvailable_bytes{{job="node", {HOST}}} / node_memory_MemTotal_bytes{{job="node", {HOST}}}',
                   "{{host}}"),),
        ),
        PanelSpec(
            "CPU and memory pressure (PSI)",
            "Share of time tasks waited for CPU or memory (Linux pressure stall information): "
            "what makes sandbox calls slow on a busy host. Empty where the kernel has PSI off.",
            "percentunit",
            (Query(f'rate(node_pressure_cpu_waiting_seconds_total{{job="node", {HOST}}}[{RATE}])',
                   "cpu {{host}}"),
             Query(f'rate(node_pressure_memory_waiting_seconds_total{{job="node", {HOST}}}[{RATE}])',
                   "memory {{host}}")),
        ),
        PanelSpec(
            "Filesystem free",
            "Free fraction of every disk filesystem (MicrosandboxHostDiskFilling, "
            "MicrosandboxHostDiskAlmostFull).",
            "percentunit",
            (Query(f'node_filesystem_avail_bytes{{job="node", {HOST}, {DISK}}}'
                   f' / node_filesystem_size_bytes{{job="node", {HOST}, {DISK}}}',
                   "{{host}} {{mountpoint}}"),),
        ),
    )),
)


def _target(query: Query, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def _panel(spec: PanelSpec) -> dash.Panel | timeseries.Panel | stat.Panel:
    panel: timeseries.Panel | stat.Panel
    if spec.stat:
        panel = stat.Panel()
    else:
        panel = timeseries.Panel().legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        if spec.stacked:
            panel = panel.fill_opacity(30).stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
    panel = panel.title(spec.title).description(spec.description).unit(spec.unit)
    panel = panel.datasource(DATASOURCE).height(8).span(spec.width)
    for index, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def _label_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def build() -> dash.Dashboard:
    """The dashboard builder (``.build()`` gives Grafana's model)."""
    board = (
        dash.Dashboard("Reflow MicroSandbox")
        .uid(UID)
        .description(
            "Calls, sandboxes, actor state, Redis, the nginx balancer and the hosts of a "
            "Reflow MicroSandbox cluster. Generated by monitoring/dashboard.py; do not edit "
            "the JSON by hand."
        )
        .tags(["reflow", "microsandbox"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .editable()
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(_label_variable("node", "Sandbox node", 'label_values(up{job="microsandbox"}, node)'))
        .with_variable(_label_variable("host", "Host", 'label_values(up{job=~"node|redis|nginx"}, host)'))
    )
    panel_id = 0
    for row in ROWS:
        panel_id += 1
        board = board.with_row(dash.Row(row.title).id(panel_id))
        for spec in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(spec).id(panel_id))
    return board


def render() -> str:
    """The dashboard as the JSON text committed in monitoring/grafana/."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python -m monitoring.dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    panels = sum(len(row.panels) for row in ROWS)
    print(f"wrote {OUTPUT} ({panels} panels, {len(json.loads(text)['panels'])} with rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
