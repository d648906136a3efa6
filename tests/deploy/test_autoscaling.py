"""deploy/kubernetes/scaled/autoscaling.yaml: the KEDA ScaledObject that scales the GPU
trainers. KEDA's CRD schema is not built into the validators at hand, so the fields are
checked against the ScaledObject and Prometheus-scaler fields KEDA 2.x documents, the HPA
that KEDA derives from it is validated strictly against the core autoscaling/v2 schema, and
the query is run by promtool on synthetic series of several API replicas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.deploy.common import SERVER_JOB, catalogue_name, graft_args, promql_series_names
from tests.deploy.test_kubernetes_scaled import (
    KUBERNETES_VERSION,
    TRIAL_DB,
    args_of,
    container,
    find,
    objects,
)

# ScaledObject spec fields, trigger fields and Prometheus-scaler metadata keys (KEDA 2.x).
SPEC_FIELDS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod"}
SPEC_FIELDS |= {"idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback"}
SPEC_FIELDS |= {"advanced", "triggers"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType"}
TRIGGER_FIELDS |= {"useCachedMetrics"}
PROMETHEUS_METADATA = {"serverAddress", "query", "threshold", "activationThreshold"}
PROMETHEUS_METADATA |= {"namespace", "customHeaders", "ignoreNullValues", "unsafeSsl"}
PROMETHEUS_METADATA |= {"queryParameters", "timeout"}

Obj = dict[str, Any]


def scaled_object() -> Obj:
    (obj,) = [o for o in objects() if o["kind"] == "ScaledObject"]
    return obj


def trigger() -> Obj:
    (t,) = scaled_object()["spec"]["triggers"]
    return dict(t)


def test_scaled_object_uses_only_keda_fields() -> None:
    obj = scaled_object()
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    spec = obj["spec"]
    assert {"scaleTargetRef", "triggers"} <= set(spec) <= SPEC_FIELDS
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[key], int), key
    assert set(spec["advanced"]) <= {
        "horizontalPodAutoscalerConfig",
        "restoreToOriginalReplicaCount",
    }
    t = trigger()
    assert set(t) <= TRIGGER_FIELDS and t["type"] == "prometheus"
    assert t["metricType"] == "AverageValue"  # replicas = ceil(value / threshold)
    metadata = t["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(metadata) <= PROMETHEUS_METADATA
    # KEDA's metadata is a map of strings: an unquoted 1 or false is refused on apply.
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    assert float(metadata["threshold"]) == 1  # one job per trainer
    assert float(metadata["activationThreshold"]) == 0  # the first job starts a trainer
    # No answer (Prometheus or every API replica down) must not read as "no jobs".
    assert metadata["ignoreNullValues"] == "false"
    address = urlsplit(metadata["serverAddress"])
    assert address.scheme in {"http", "https"} and address.hostname and address.port


def test_it_scales_the_gpu_trainers_and_nothing_else_sets_their_count() -> None:
    spec = scaled_object()["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    trainer = find("Deployment", ref["name"])
    assert graft_args(args_of(trainer)).lanes == ["trainer"]
    assert container(trainer)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in trainer["spec"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] >= 1


def derived_hpa() -> Obj:
    """The HorizontalPodAutoscaler KEDA creates for the ScaledObject (its behavior passed
    through as it is), for the core schema to judge."""
    spec = scaled_object()["spec"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-graft-trainer"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": max(1, spec["minReplicaCount"]),
            "maxReplicas": spec["maxReplicaCount"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "s0-prometheus"},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }


def test_the_derived_hpa_validates_against_the_kubernetes_schema() -> None:
    hpa = derived_hpa()
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["periodSecond"] = 60  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_query_reads_catalogue_metrics_of_the_api_servers() -> None:
    query = trigger()["metadata"]["query"]
    names = promql_series_names(query)
    assert names == {"graft_jobs"} and catalogue_name("graft_jobs") == "graft_jobs"
    assert f'job="{SERVER_JOB}"' in query


def promql_gives(expr: str, series: dict[str, float], expected: float, tmp: Path) -> str:
    """promtool's output for `expr` evaluated on constant `series` ("" when it equals
    `expected` as a one-element vector)."""
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install -y prometheus"
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": f"{v}x5"} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "{}", "value": expected}],
                    }
                ],
            }
        ],
    }
    path = tmp / "query_test.yml"
    path.write_text(yaml.safe_dump(test))
    run = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True)
    return "" if run.returncode == 0 else run.stdout + run.stderr


def replicas_exporting(jobs: dict[str, int], replicas: int) -> dict[str, float]:
    """graft_jobs as `replicas` API servers export it: each the same store-wide counts."""
    return {
        f'graft_jobs{{job="{SERVER_JOB}", instance="10.0.0.{i}:9464", state="{state}"}}': n
        for i in range(replicas)
        for state, n in jobs.items()
    }


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_query_counts_queued_and_running_jobs_once_whatever_the_replicas(
    replicas: int, tmp_path: Path
) -> None:
    query = trigger()["metadata"]["query"]
    jobs = {"queued": 3, "running": 2, "succeeded": 40, "failed": 1, "cancelled": 4}
    assert promql_gives(query, replicas_exporting(jobs, replicas), 5, tmp_path) == ""
    idle = {state: 0 for state in jobs}
    assert promql_gives(query, replicas_exporting(idle, replicas), 0, tmp_path) == ""


def test_the_query_check_can_fail(tmp_path: Path) -> None:
    # Summing the replicas' gauges would ask for a trainer per job per replica.
    summed = f'sum(graft_jobs{{job="{SERVER_JOB}", state=~"queued|running"}})'
    series = replicas_exporting({"queued": 3, "running": 2}, 2)
    assert "got: {} 1E+01" in promql_gives(summed, series, 5, tmp_path)


def test_the_trial_database_takes_every_connection_at_full_scale() -> None:
    postgres = find("StatefulSet", "graft-postgres", TRIAL_DB)
    args = container(postgres)["args"]
    max_connections = int(args[args.index("-c") + 1].removeprefix("max_connections="))
    servers = find("Deployment", "graft-server")["spec"]["replicas"]
    advisors = find("Deployment", "graft-advisor")["spec"]["replicas"]
    trainers = scaled_object()["spec"]["maxReplicaCount"]
    # A store object pools up to 10 connections; an API server has one more, to LISTEN.
    # During a rolling update one more server runs (maxSurge 1).
    needed = 11 * (servers + 1) + 10 * (advisors + trainers)
    assert max_connections >= needed + 3  # superuser_reserved_connections
