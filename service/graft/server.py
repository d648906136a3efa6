"""`graft serve`: the API server. It validates, converts and delegates; it never trains.

On the embedded default it also starts and supervises one local worker process
(restarted if it dies). SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused,
in-flight ones get `grace_seconds` to finish, the worker is stopped, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from graft.api.errors import ErrorBoundaryInterceptor, WrappingInterceptor, wrap_handler
from graft.api.servicer import AdaptationServicer, Services
from graft.config import Config
from graft.observability.logs import setup_logging
from graft.observability.metrics import (
    MetricsInterceptor,
    ServerMetrics,
    StoreCollector,
    serve_metrics,
)
from graft.predict import Predictor
from graft.registry import ModelRegistry
from graft.store import open_store
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdaptationService"].full_name
# Health service name for "some worker is alive" (heartbeat within `worker_ready_seconds`).
# The API stays SERVING without one: jobs queue until a worker comes.
WORKER_HEALTH_NAME = "graft.worker"


class HealthMonitor:
    """Keeps grpc.health.v1 truthful: NOT_SERVING until started and once draining; the API
    ("" and the AdaptationService) SERVING only while the store answers a ping; the
    `graft.worker` entry SERVING while some worker's heartbeat is recent."""

    def __init__(
        self,
        health_servicer: health.HealthServicer,
        services: Services,
        interval: float = 2.0,
    ) -> None:
        self.health = health_servicer
        self.services = services
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._api_serving: bool | None = None
        self._worker_serving: bool | None = None
        for name in ("", SERVICE_NAME, WORKER_HEALTH_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.services.draining.is_set():
                return  # enter_graceful_shutdown has set NOT_SERVING for good
            self.check()

    def check(self) -> None:
        store = self.services.store
        try:
            store.ping()
            api_ok = True
            now = time.time()
            window = self.services.config.worker_ready_seconds
            worker_ok = any(now - w.last_heartbeat <= window for w in store.list_workers())
        except Exception as exc:
            api_ok = worker_ok = False
            if self._api_serving is not False:
                log.error("health: the job store does not answer (%s): NOT_SERVING", exc)
        if self.services.draining.is_set():
            return
        if api_ok != self._api_serving:
            status = _status(api_ok)
            for name in ("", SERVICE_NAME):
                self.health.set(name, status)
            if api_ok and self._api_serving is False:
                log.info("health: the job store answers again: SERVING")
            self._api_serving = api_ok
        if worker_ok != self._worker_serving:
            self.health.set(WORKER_HEALTH_NAME, _status(worker_ok))
            log.info("health: %s", "a worker is ready" if worker_ok else "no worker is ready")
            self._worker_serving = worker_ok


class DrainGate(WrappingInterceptor):
    """Draining without surprises: once `draining` is set, a new AdaptationService RPC is
    refused with UNAVAILABLE (which clients retry elsewhere) instead of being cut off later;
    RPCs already running are counted, so shutdown can wait for them (`wait_idle`) before
    the gRPC server stops (which would cancel whatever still runs or waits)."""

    def __init__(self, draining: threading.Event) -> None:
        self.draining = draining
        self._in_flight = 0
        self._last_arrival = 0.0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def _track(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float, quiet: float = 1.0) -> bool:
        """Wait until no RPC runs and none has arrived for `quiet` seconds (True), or
        `timeout` seconds pass (False). The quiet period lets clients' transparent retries
        of UNAVAILABLE run out against this server rather than meet a stopped one, which
        would answer CANCELLED."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                now = time.monotonic()
                if self._in_flight == 0 and now - self._last_arrival >= quiet:
                    return True
                if now >= deadline:
                    return False
                self._idle.wait(min(0.05, deadline - now))

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith(f"/{SERVICE_NAME}/"):
            # Health checks and reflection answer throughout (health says NOT_SERVING) and
            # are not waited for: a client's open health Watch must not hold the shutdown.
            return handler

        def refuse_if_draining(context: grpc.ServicerContext) -> None:
            with self._idle:
                self._last_arrival = time.monotonic()
            if self.draining.is_set():
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "server is shutting down; retry (another instance, or this one restarted)",
                )

        def unary(fn: Callable[..., Any], streaming_request: bool) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                refuse_if_draining(context)
                with self._track():
                    return fn(request, context)

            return wrapper

        def stream(fn: Callable[..., Any], streaming_request: bool) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                refuse_if_draining(context)
                with self._track():
                    yield from fn(request, context)

            return wrapper

        return wrap_handler(handler, unary_response=unary, stream_response=stream)


def _status(ok: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )


class WorkerSupervisor:
    """Runs one `graft worker` child process and restarts it when it exits."""

    def __init__(self, config: Config, restart_delay: float = 1.0) -> None:
        self.config = config
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self._config_file = config.data_dir / "worker-config.json"

    def start(self) -> None:
        self._config_file.parent.mkdir(parents=True, exist_ok=True)
        self._config_file.write_text(self.config.to_json())
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "graft.training.worker",
            "--config-file",
            str(self._config_file),
        ]
        proc = subprocess.Popen(cmd)
        log.info("started worker process pid %d", proc.pid)
        return proc

    def _run(self) -> None:
        while not self._stop.is_set():
            self.process = self._spawn()
            while self.process.poll() is None:
                if self._stop.wait(0.2):
                    return
            log.warning(
                "worker pid %d exited with %s; restarting",
                self.process.pid,
                self.process.returncode,
            )
            self.restarts += 1
            if self._stop.wait(self.restart_delay):
                return

    def request_stop(self) -> None:
        """SIGTERM the worker now: it stops at its next checkpoint and hands its job back."""
        self._stop.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> None:
        self.request_stop()
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)


def build_server(
    config: Config, metrics: ServerMetrics | None = None
) -> tuple[grpc.Server, Services, health.HealthServicer, DrainGate]:
    metrics = metrics or ServerMetrics()
    store = open_store(config)
    registry = ModelRegistry(store, config.registry_dir)
    services = Services(
        config=config,
        store=store,
        registry=registry,
        predictor=Predictor(registry, store, config.model_cache_size, metrics=metrics),
        draining=threading.Event(),
    )
    gate = DrainGate(services.draining)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rpc"),
        # Metrics outermost: it records the status code the gate and the error boundary set.
        interceptors=[MetricsInterceptor(metrics), gate, ErrorBoundaryInterceptor()],
        options=options,
    )
    pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(services), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    for name in ("", SERVICE_NAME, WORKER_HEALTH_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, services, health_servicer, gate


def run_server(config: Config) -> int:
    setup_logging(config.log_format, config.log_level, process="server")
    log.info("config: %s", config.to_json())
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = ServerMetrics()
    metrics.set_build_info()
    server, services, health_servicer, gate = build_server(config, metrics)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        log.error("could not bind %s:%d", config.host, config.port)
        return 1
    metrics_port = 0
    if config.metrics_port:
        metrics.registry.register(StoreCollector(services.store, config.worker_ready_seconds))
        metrics_port = serve_metrics(metrics.registry, config.metrics_port, config.host)
        log.info("metrics on http://%s:%d/metrics", config.host, metrics_port)
    monitor = HealthMonitor(health_servicer, services)
    supervisor = WorkerSupervisor(config) if config.embedded_worker else None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received signal %d: draining", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server.start()
    if supervisor:
        supervisor.start()
    monitor.start()  # SERVING once the store answers
    _write_ready_file(config, port, metrics_port)
    log.info("graft serving on %s:%d (data dir %s)", config.host, port, config.data_dir)

    stop.wait()
    services.draining.set()
    health_servicer.enter_graceful_shutdown()
    monitor.stop()
    if supervisor:
        supervisor.request_stop()  # the worker checkpoints while RPCs drain
    if not gate.wait_idle(config.grace_seconds):
        log.warning(
            "RPCs still running after %.0f s of draining: aborting them", config.grace_seconds
        )
    server.stop(0.5).wait()
    if supervisor:
        # The worker stops at its next checkpoint, or at the next step after its stop
        # timeout; past this much longer, it is killed (its lease then lapses: no loss).
        supervisor.stop(timeout=config.stop_timeout_seconds + config.grace_seconds + 30)
    services.store.close()
    log.info("graft stopped")
    return 0


def _write_ready_file(config: Config, port: int, metrics_port: int) -> None:
    """Record the bound ports (useful with --port 0) for scripts and tests."""
    info = {"port": port, "metrics_port": metrics_port, "pid": os.getpid(), "time": time.time()}
    path = config.data_dir / "server.json"
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
