"""Prometheus metrics of the server and of a worker, each in its own `CollectorRegistry`.

Server: the conventional gRPC server metrics (the names of go-grpc-prometheus and
py-grpc-prometheus, so existing dashboards and alerts work), recorded by
graft.api.rpc_metrics.MetricsInterceptor for unary and streaming RPCs alike (this module loads no
gRPC: the worker imports it); Predict's stage timings and model cache. The job store's
state is read at scrape time by graft.observability.store_metrics.StoreCollector.

Worker: training throughput, step/epoch/checkpoint/job timings, GPU memory, heartbeat.
Each process owns its counters; a restarted worker starts from zero, which Prometheus's
`rate()` reads as a counter reset (no shared multiprocess files to corrupt).
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.exposition import ThreadingWSGIServer

from graft import __version__

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# RPCs here run from milliseconds (GetJob) to hours (StreamProgress of a long job).
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
PREDICT_STAGES = ("load", "decode", "queue", "inference", "postprocess")
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def new_registry() -> CollectorRegistry:
    """A registry with the standard process/platform/GC collectors (process_start_time_seconds
    is how Prometheus tells a restarted process from a stalled one)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str,
    authorize: Callable[[str | None], bool] | None = None,
) -> int:
    """Start the /metrics HTTP endpoint on a daemon thread; returns the bound port. With
    `authorize`, a scrape whose Authorization header it refuses gets 401."""
    if authorize is None:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return int(server.server_address[1])
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not authorize(environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="graft"')],
            )
            return [b"an admin API key is required: Authorization: Bearer <key>\n"]
        return metrics_app(environ, start_response)

    class Family(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = make_server(host, port, app, Family, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return int(httpd.server_address[1])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class ServerMetrics:
    """The API server's metrics. Registered in this order (the order of a scrape): the gRPC
    server metrics, Predict's, build info, admission control's."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else new_registry()
        self._define_rpc(r)
        self._define_predict(r)
        self.build_info = Gauge(
            "graft_build_info",
            "Always 1; the labels say what is running.",
            ("version", "python", "torch", "grpcio"),
            registry=r,
        )
        self._define_admission(r)
        for stage in PREDICT_STAGES:
            self.predict_stage.labels(stage)  # every series exists from the first scrape
        for outcome in ("ok", "error"):
            self.predict_images.labels(outcome)

    def _define_rpc(self, r: CollectorRegistry) -> None:
        """The conventional gRPC server metrics (go-grpc-prometheus's names)."""
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", RPC_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*RPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its completion (streams: until the last message).",
            RPC_LABELS,
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Request messages received (one per unary request; each for streams).",
            RPC_LABELS,
            registry=r,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Response messages sent (one per unary response; each for streams).",
            RPC_LABELS,
            registry=r,
        )

    def _define_predict(self, r: CollectorRegistry) -> None:
        """Predict's stage timings, batch sizes, outcomes and model cache."""
        self.predict_stage = Histogram(
            "graft_predict_stage_seconds",
            "Predict time per stage: load (model from the registry, cache misses only), decode"
            " (decode and preprocess), queue (waiting for the model), inference, postprocess.",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.predict_batch = Histogram(
            "graft_predict_batch_size",
            "Images per Predict request.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.predict_forward_batch = Histogram(
            "graft_predict_forward_batch_size",
            "Images per forward pass (dynamic batching gathers concurrent requests into one).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.predict_images = Counter(
            "graft_predict_images_total",
            "Images classified by Predict, by outcome (error: the image alone failed).",
            ("outcome",),
            registry=r,
        )
        self.loaded_models = Gauge(
            "graft_loaded_models", "Model versions loaded in the Predict cache.", registry=r
        )
        self.cache_hits = Counter(
            "graft_model_cache_hits_total", "Predict calls served by a loaded model.", registry=r
        )
        self.cache_misses = Counter(
            "graft_model_cache_misses_total",
            "Predict calls that loaded their model from the registry.",
            registry=r,
        )
        self.cache_evictions = Counter(
            "graft_model_cache_evictions_total",
            "Models evicted from the Predict cache (least recently used first).",
            registry=r,
        )

    def _define_admission(self, r: CollectorRegistry) -> None:
        """Admission control's slots: running, waiting, rejected RPCs."""
        self.rpc_running = Gauge(
            "graft_rpc_running",
            "AdaptationService RPCs running now, by method (admission control's slots).",
            ("grpc_method",),
            registry=r,
        )
        self.rpc_waiting = Gauge(
            "graft_rpc_waiting",
            "RPCs waiting for an admission slot, by method.",
            ("grpc_method",),
            registry=r,
        )
        self.rpc_rejected = Counter(
            "graft_rpc_rejected_total",
            "RPCs refused with RESOURCE_EXHAUSTED by admission control, by method.",
            ("grpc_method",),
            registry=r,
        )

    def set_build_info(self) -> None:
        import torch

        grpcio = importlib.metadata.version("grpcio")  # not grpc itself: no gRPC here
        self.build_info.labels(
            __version__, platform.python_version(), torch.__version__, grpcio
        ).set(1)

    def observe_admission(self, method: str, running: int, waiting: int, rejected: bool) -> None:
        self.rpc_running.labels(method).set(running)
        self.rpc_waiting.labels(method).set(waiting)
        if rejected:
            self.rpc_rejected.labels(method).inc()

    def observe_predict(
        self, stage_seconds: dict[str, float], images: int, failed: int, cache_hit: bool
    ) -> None:
        for stage, seconds in stage_seconds.items():
            if stage != "load" or not cache_hit:
                self.predict_stage.labels(stage).observe(seconds)
        self.predict_batch.observe(images)
        self.predict_images.labels("ok").inc(images - failed)
        self.predict_images.labels("error").inc(failed)


STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
EPOCH_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
JOB_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
JOB_OUTCOMES = ("succeeded", "failed", "cancelled", "released")
STRATEGY_LABELS = ("feature_extraction", "partial_fine_tune", "full_fine_tune")


class WorkerMetrics:
    """A worker's metrics; also the training loop's observer (`on_step`, `on_epoch`,
    `on_checkpoint`)."""

    def __init__(self, registry: CollectorRegistry | None = None, cuda: bool = False) -> None:
        r = self.registry = registry if registry is not None else new_registry()
        self.images = Counter(
            "graft_worker_training_images_total",
            "Training images processed (each image once per epoch).",
            registry=r,
        )
        self.images_per_second = Gauge(
            "graft_worker_training_images_per_second",
            "Training throughput of the latest step (kept when idle: see graft_worker_busy).",
            registry=r,
        )
        self.step_seconds = Histogram(
            "graft_worker_step_seconds",
            "Wall time between the ends of successive training steps (data loading included).",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.epoch_seconds = Histogram(
            "graft_worker_epoch_seconds",
            "Wall time of a training epoch including its evaluation.",
            buckets=EPOCH_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "graft_worker_job_duration_seconds",
            "Wall time of a job on this worker, by strategy and outcome (released: handed"
            " back on shutdown to resume elsewhere).",
            ("strategy", "outcome"),
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "graft_worker_checkpoint_seconds",
            "Time to write an epoch checkpoint.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.last_heartbeat = Gauge(
            "graft_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the worker's latest heartbeat to the store.",
            registry=r,
        )
        self.ready = Gauge(
            "graft_worker_ready",
            "1 while the worker can take jobs (store reachable, not stopping).",
            registry=r,
        )
        self.busy = Gauge("graft_worker_busy", "1 while the worker runs a job.", registry=r)
        self.tasks = Histogram(
            "graft_worker_task_duration_seconds",
            "Wall time of an advisor-lane task (advise, check_upload, compare, export), by kind and"
            " outcome. Its _count is the number of tasks this process ran.",
            ("kind", "outcome"),
            buckets=(*STEP_BUCKETS[4:], 60, 120, 300, 600),
            registry=r,
        )
        self.cuda = cuda
        if cuda:
            self.gpu_allocated = Gauge(
                "graft_worker_gpu_memory_allocated_bytes",
                "CUDA memory held by tensors (torch.cuda.memory_allocated).",
                registry=r,
            )
            self.gpu_reserved = Gauge(
                "graft_worker_gpu_memory_reserved_bytes",
                "CUDA memory reserved by PyTorch's caching allocator.",
                registry=r,
            )
        for strategy in STRATEGY_LABELS:
            for outcome in JOB_OUTCOMES:
                self.job_seconds.labels(strategy, outcome)  # zeros exist: rates have a base
        self._last_step: float | None = None

    # -- the training loop's observer ----------------------------------------------------

    def on_step(self, images: int) -> None:
        now = time.perf_counter()
        self.images.inc(images)
        if self._last_step is not None:
            seconds = now - self._last_step
            self.step_seconds.observe(seconds)
            if seconds > 0:
                self.images_per_second.set(images / seconds)
        self._last_step = now
        if self.cuda:
            import torch

            self.gpu_allocated.set(torch.cuda.memory_allocated())
            self.gpu_reserved.set(torch.cuda.memory_reserved())

    def on_epoch_start(self) -> None:
        self._last_step = time.perf_counter()

    def on_epoch(self, seconds: float) -> None:
        self.epoch_seconds.observe(seconds)
        self._last_step = None

    def on_checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds.observe(seconds)

    # -- the worker ----------------------------------------------------------------------

    def task_finished(self, kind: str, outcome: str, seconds: float) -> None:
        self.tasks.labels(kind, outcome).observe(seconds)

    def job_finished(self, strategy: str, outcome: str, seconds: float) -> None:
        self.job_seconds.labels(strategy, outcome).observe(seconds)
        self._last_step = None
