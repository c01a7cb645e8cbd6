"""Runs ``promtool test rules`` on the alert rules with the cases in alerts.test.yml.

promtool compares an expected alert's annotations exactly, so :func:`complete_cases`
copies each rule's static annotations (those without a template, e.g. ``runbook``)
into the cases' expected alerts; the cases spell out the templated ``summary`` only.
Nothing of the rules themselves is changed.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

CASES = Path(__file__).with_name("alerts.test.yml")


def alert_rules(rules_file: Path) -> dict[str, dict[str, Any]]:
    """Alert name -> rule mapping, from a rendered rules file (every group)."""
    data = yaml.safe_load(rules_file.read_text())
    return {
        rule["alert"]: rule
        for group in data["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def static_annotations(rule: dict[str, Any]) -> dict[str, str]:
    """The annotations of a rule that Prometheus does not template."""
    return {k: v for k, v in rule.get("annotations", {}).items() if "{{" not in v}


def complete_cases(cases: dict[str, Any], rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cases with every expected alert's static annotations filled in."""
    done = copy.deepcopy(cases)
    for test in done["tests"]:
        for check in test.get("alert_rule_test", []):
            rule = rules[check["alertname"]]
            for expected in check.get("exp_alerts") or []:
                annotations = dict(static_annotations(rule))
                annotations.update(expected.get("exp_annotations") or {})
                expected["exp_annotations"] = annotations
    return done


def run_promtool_tests(rules_file: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Write the completed cases beside a copy of ``rules_file`` and run promtool."""
    workdir.mkdir(parents=True, exist_ok=True)
    cases = yaml.safe_load(CASES.read_text())
    (workdir / cases["rule_files"][0]).write_text(rules_file.read_text())
    test_file = workdir / CASES.name
    test_file.write_text(yaml.safe_dump(complete_cases(cases, alert_rules(rules_file))))
    return subprocess.run(
        ["promtool", "test", "rules", str(test_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
