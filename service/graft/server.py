"""`graft serve`: the API server. It validates, converts and delegates; it never trains.

On the embedded default it also starts and supervises one local worker process
(restarted if it dies). SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused,
in-flight ones get `grace_seconds` to finish, the worker is stopped, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from graft.api.errors import ErrorBoundaryInterceptor
from graft.api.servicer import AdaptationServicer, Services
from graft.config import Config
from graft.predict import Predictor
from graft.registry import ModelRegistry
from graft.store import open_store
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdaptationService"].full_name


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

    def stop(self, timeout: float) -> None:
        self._stop.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)


def build_server(config: Config) -> tuple[grpc.Server, Services, health.HealthServicer]:
    store = open_store(config)
    registry = ModelRegistry(store, config.registry_dir)
    services = Services(
        config=config,
        store=store,
        registry=registry,
        predictor=Predictor(registry, store, config.model_cache_size),
        draining=threading.Event(),
    )
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rpc"),
        interceptors=[ErrorBoundaryInterceptor()],
        options=options,
    )
    pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(services), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, services, health_servicer


def run_server(config: Config) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("config: %s", config.to_json())
    config.data_dir.mkdir(parents=True, exist_ok=True)
    server, services, health_servicer = build_server(config)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        log.error("could not bind %s:%d", config.host, config.port)
        return 1
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
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
    services.store.ping()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _write_ready_file(config, port)
    log.info("graft serving on %s:%d (data dir %s)", config.host, port, config.data_dir)

    stop.wait()
    health_servicer.enter_graceful_shutdown()
    services.draining.set()
    server.stop(config.grace_seconds).wait()
    if supervisor:
        supervisor.stop(timeout=config.grace_seconds + config.lease_seconds)
    services.store.close()
    log.info("graft stopped")
    return 0


def _write_ready_file(config: Config, port: int) -> None:
    """Record the bound port (useful with --port 0) for scripts and tests."""
    info = {"port": port, "pid": os.getpid(), "time": time.time()}
    path = config.data_dir / "server.json"
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
