"""Reading metric names out of PromQL and out of a /metrics exposition.

``promtool`` checks PromQL syntax but cannot list the metrics an expression names, so
:func:`selectors` walks the expression with ``promql-parser``. :func:`exported` reads a
component's /metrics text with prometheus_client's own parser: every sample name with
its label names, plus the sample names a family without samples yet would have (a
labelled counter nobody has incremented still declares itself with HELP and TYPE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Grafana's variables, replaced by what they stand for at query time.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$node": ".*", "$host": ".*"}

# Labels Prometheus adds to every scraped series (the scrape configuration's target labels).
TARGET_LABELS = {"job", "instance", "node", "host"}

# The sample names a "# TYPE NAME TYPE" line declares (text format 0.0.4): a counter's
# TYPE line names its sample itself (x_total from prometheus_client, x from Go exporters).
DECLARED = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


@dataclass(frozen=True)
class Selector:
    """A vector selector of an expression: the metric and the labels it matches on."""

    metric: str
    labels: frozenset[str]


def substitute(expr: str) -> str:
    """The expression as Prometheus receives it from Grafana."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in ``expr`` (ValueError if it does not parse)."""
    found: list[Selector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            found.append(Selector(node.name, frozenset(m.name for m in node.matchers.matchers)))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by (...)`` clauses (they must exist for the grouping to mean anything)."""
    return {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr)
            for label in group.split(",") if label.strip()}


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, for every series and every declared family of ``text``.

    Names are taken from the text as Prometheus stores them: prometheus_client's parser
    renames a counter sample ``x`` to ``x_total``, so only the label sets come from it
    (its samples are in the order of the text's sample lines).
    """
    names: dict[str, set[str]] = {}
    raw: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            for suffix in DECLARED.get(kind, ("",)):
                names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            match = SAMPLE_NAME.match(line)
            assert match, f"not a sample line: {line!r}"
            raw.append(match.group(1))
    samples = [sample for family in text_string_to_metric_families(text)
               for sample in family.samples]
    assert len(samples) == len(raw), "the parser and the text disagree on the sample count"
    for name, sample in zip(raw, samples, strict=True):
        names.setdefault(name, set()).update(sample.labels)
    return names
