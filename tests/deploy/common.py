"""What the deploy/ tests share: paths, the metric catalogue, a PromQL name extractor and the
real `graft` argument parser."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from graft.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OPERATIONS_MD = REPO / "docs" / "OPERATIONS.md"

SERVER_JOB = "graft-server"
WORKER_JOB = "graft-worker"
IMAGE_UID = 10001  # the Dockerfile's USER; Kubernetes runAsUser must match

# Every metric the server (job graft-server) and the workers (job graft-worker) export, with
# its Prometheus type (prometheus_client's process_* and python_* aside). The dashboard, the
# alerts and docs/OPERATIONS.md use these names only; test_metrics.py holds this list to the
# names service/graft/observability/metrics.py defines.
SERVER_METRICS: dict[str, str] = {
    "grpc_server_started_total": "counter",
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "grpc_server_msg_received_total": "counter",
    "grpc_server_msg_sent_total": "counter",
    "graft_jobs": "gauge",
    "graft_queue_depth": "gauge",
    "graft_oldest_queued_job_age_seconds": "gauge",
    "graft_predict_stage_seconds": "histogram",
    "graft_predict_batch_size": "histogram",
    "graft_predict_forward_batch_size": "histogram",
    "graft_predict_images_total": "counter",
    "graft_loaded_models": "gauge",
    "graft_model_cache_hits_total": "counter",
    "graft_model_cache_misses_total": "counter",
    "graft_model_cache_evictions_total": "counter",
    "graft_registry_model_versions": "gauge",
    "graft_upload_bytes": "gauge",
    "graft_store_up": "gauge",
    "graft_workers_ready": "gauge",
    "graft_build_info": "gauge",
    "graft_rpc_running": "gauge",
    "graft_rpc_waiting": "gauge",
    "graft_rpc_rejected_total": "counter",
}
WORKER_METRICS: dict[str, str] = {
    "graft_worker_training_images_total": "counter",
    "graft_worker_training_images_per_second": "gauge",
    "graft_worker_step_seconds": "histogram",
    "graft_worker_epoch_seconds": "histogram",
    "graft_worker_job_duration_seconds": "histogram",
    "graft_worker_checkpoint_seconds": "histogram",
    "graft_worker_gpu_memory_allocated_bytes": "gauge",
    "graft_worker_gpu_memory_reserved_bytes": "gauge",
    "graft_worker_last_heartbeat_timestamp_seconds": "gauge",
    "graft_worker_ready": "gauge",
    "graft_worker_busy": "gauge",
    "graft_worker_task_duration_seconds": "histogram",
}
METRICS = {**SERVER_METRICS, **WORKER_METRICS}
# Prometheus' own per-target series, usable beside the catalogue.
BUILTIN_SERIES = {"up"}

ALERTS = {
    "GraftServerDown",
    "GraftWorkerDown",
    "GraftQueueBackingUp",
    "GraftJobFailureRate",
    "GraftPredictErrorRate",
    "GraftPredictLatencyHigh",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def promql_series_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        if s[m.end() :].lstrip().startswith("("):  # a function call
            continue
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def catalogue_name(series: str) -> str | None:
    """The catalogue metric a series belongs to: itself, or a histogram's _bucket/_sum/_count."""
    if series in METRICS or series in BUILTIN_SERIES:
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base
    return None


def graft_args(argv: list[str]) -> argparse.Namespace:
    """Parse a `graft` command line with the real CLI parser (SystemExit if it is invalid)."""
    args: argparse.Namespace = build_parser().parse_args(argv)
    return args


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def markdown_anchors(text: str) -> set[str]:
    """GitHub-style anchors of the Markdown headings in `text`."""
    anchors = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors
