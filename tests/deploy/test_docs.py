"""docs/OPERATIONS.md covers what deploy/ ships: every metric, every alert, every file."""

from __future__ import annotations

import re

from tests.deploy.common import ALERTS, DEPLOY, METRICS, OPERATIONS_MD, REPO, markdown_anchors


def test_every_metric_is_documented_with_its_type() -> None:
    text = OPERATIONS_MD.read_text()
    for name, kind in METRICS.items():
        row = re.search(rf"^\| `{name}` \| (\w+) \|", text, re.MULTILINE)
        assert row, f"docs/OPERATIONS.md has no table row for {name}"
        assert row.group(1) == kind, name


def test_every_alert_has_a_runbook_section() -> None:
    anchors = markdown_anchors(OPERATIONS_MD.read_text())
    assert {alert.lower() for alert in ALERTS} <= anchors


def test_every_deploy_file_is_mentioned() -> None:
    text = OPERATIONS_MD.read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        rel = path.relative_to(REPO).as_posix()
        assert rel in text or f"`{path.name}`" in text, f"docs/OPERATIONS.md never names {rel}"
