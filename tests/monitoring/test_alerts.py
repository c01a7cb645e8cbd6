"""The alert rules fire when they should and stay quiet otherwise.

``promtool test rules`` runs the cases of alerts.test.yml against the rules as
ansible/render.yml renders them with the prometheus role's default thresholds; the
other tests hold every rule to having such cases, a severity and a runbook.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .alert_tests import CASES, alert_rules, run_promtool_tests
from .conftest import Rendered

SEVERITIES = {"critical", "warning", "info"}


def test_every_alert_rule_passes_its_promtool_unit_tests(
    rendered_local: Rendered, tmp_path: Path
) -> None:
    result = run_promtool_tests(rendered_local.dir / "microsandbox-alerts.yml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet(
    rendered_local: Rendered,
) -> None:
    rules = alert_rules(rendered_local.dir / "microsandbox-alerts.yml")
    cases = yaml.safe_load(CASES.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert sorted(set(rules) - firing) == [], "alerts without a firing case"
    assert sorted(set(rules) - quiet) == [], "alerts without a quiet case"
    assert sorted((firing | quiet) - set(rules)) == [], "cases for alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_and_a_runbook(rendered_local: Rendered) -> None:
    rules = alert_rules(rendered_local.dir / "microsandbox-alerts.yml")
    assert len(rules) >= 16
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        assert len(annotations.get("runbook", "")) > 80, f"{name}: no runbook text"


def test_the_operator_guide_lists_every_alert(rendered_local: Rendered) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    missing = [name for name in alert_rules(rendered_local.dir / "microsandbox-alerts.yml")
               if f"`{name}`" not in guide]
    assert missing == [], f"docs/monitoring.md does not describe {missing}"
