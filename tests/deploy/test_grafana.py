"""deploy/grafana: the dashboard shows every catalogue metric and nothing else, its PromQL
parses (promtool), and the provisioning files point where compose.yaml mounts things."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.common import (
    BUILTIN_SERIES,
    DEPLOY,
    METRICS,
    catalogue_name,
    load_yaml,
    promql_series_names,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "graft.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # panels inside collapsed rows
    return out


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", []) if "expr" in t]


def test_dashboard_shows_every_metric_and_only_catalogue_metrics() -> None:
    shown: set[str] = set()
    for expr in expressions():
        names = promql_series_names(expr)
        assert names, expr
        for name in names:
            base = catalogue_name(name)
            assert base is not None, f"{name} (in {expr}) is not in the metric catalogue"
            shown.add(base)
    assert set(METRICS) - shown == set(), "metrics without a panel"
    assert shown <= set(METRICS) | BUILTIN_SERIES


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # Each expression as a recording rule, with Grafana's interval variable made concrete.
    rules = [
        {"record": f"graft:dashboard:expr{i}", "expr": e.replace("$__rate_interval", "1m")}
        for i, e in enumerate(expressions())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install -y prometheus"
    run = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] == "graft" and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_provisioning() -> None:
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"  # the compose service
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "graft.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
