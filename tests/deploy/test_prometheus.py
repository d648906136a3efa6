"""deploy/prometheus: promtool checks the configs and rules and runs the alerts' unit tests;
the alerts use only catalogue metrics and each has labels, annotations and a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.common import (
    ALERTS,
    DEPLOY,
    OPERATIONS_MD,
    SERVER_JOB,
    WORKER_JOB,
    catalogue_name,
    load_yaml,
    markdown_anchors,
    promql_series_names,
)

PROMETHEUS = DEPLOY / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Not a skip: CI installs it (Debian's `prometheus` package), and so must a developer.
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install -y prometheus"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_rules() -> None:
    run = promtool("check", "rules", "alerts.yml")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_checks_config(config: str) -> None:
    run = promtool("check", "config", config)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_fire_on_synthetic_series() -> None:
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == ALERTS


def test_alerts_are_the_documented_set_with_labels_and_annotations() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    anchors = markdown_anchors(OPERATIONS_MD.read_text())
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        doc, _, anchor = notes["runbook"].partition("#")
        assert doc == "docs/OPERATIONS.md" and anchor == rule["alert"].lower()
        assert anchor in anchors, f"docs/OPERATIONS.md has no heading for {rule['alert']}"


def test_alert_expressions_use_catalogue_metrics_and_job_names() -> None:
    for rule in alert_rules():
        names = promql_series_names(rule["expr"])
        assert names, rule["alert"]
        unknown = {n for n in names if catalogue_name(n) is None}
        assert not unknown, (rule["alert"], unknown)
        jobs = set(re.findall(r'job="([^"]*)"', rule["expr"]))
        assert jobs <= {SERVER_JOB, WORKER_JOB}, (rule["alert"], jobs)


def scrape_jobs(config: Path) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(config)["scrape_configs"]}


def test_local_config_scrapes_the_default_ports() -> None:
    jobs = scrape_jobs(PROMETHEUS / "prometheus.yml")
    assert set(jobs) == {SERVER_JOB, WORKER_JOB}
    assert jobs[SERVER_JOB]["static_configs"][0]["targets"] == ["localhost:9464"]
    # The embedded trainer and advisor workers of `graft serve`.
    assert jobs[WORKER_JOB]["static_configs"][0]["targets"] == ["localhost:9465", "localhost:9466"]
    for config in ("prometheus.yml", "prometheus.compose.yml"):
        assert load_yaml(PROMETHEUS / config)["rule_files"] == ["alerts.yml"]


def test_promql_name_extraction() -> None:
    # The checker the dashboard and alert tests rely on must itself find what it should.
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(foo_seconds_bucket{a="b,c"}[5m])))'
        " / on (job) group_left bar_total offset 5m > 1 and time() - baz"
    )
    assert promql_series_names(expr) == {"foo_seconds_bucket", "bar_total", "baz"}
    assert catalogue_name("grpc_server_handling_seconds_bucket") == "grpc_server_handling_seconds"
    assert catalogue_name("graft_jobs_bucket") is None  # a gauge has no buckets
    assert catalogue_name("up") == "up"
