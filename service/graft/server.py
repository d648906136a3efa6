"""`graft serve`: the API server, on grpc.aio. It validates, converts and delegates; it
never trains, probes or scans a dataset (that is the workers'), and an open stream or a
waiting call costs no thread.

On the embedded default it also starts and supervises one worker process per lane (a
trainer and an advisor, each restarted if it dies), so advice never waits behind a
fine-tune. SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused, in-flight ones get
`grace_seconds` to finish, the workers are stopped, exit 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from graft.api.admission import AdmissionInterceptor, parse_limits
from graft.api.auth import AuthInterceptor, admin_scrapes
from graft.api.drain import DrainGate
from graft.api.errors import ErrorBoundaryInterceptor
from graft.api.health import SERVICE_NAME, WORKER_HEALTH_NAME, HealthMonitor
from graft.api.rpc_metrics import MetricsInterceptor
from graft.api.servicer import AdaptationServicer
from graft.api.services import Services
from graft.api.watcher import StoreWatcher
from graft.config import Config, is_loopback
from graft.errors import GraftError
from graft.observability.logs import setup_logging
from graft.observability.metrics import ServerMetrics, serve_metrics
from graft.observability.store_metrics import StoreCollector
from graft.predict import DecodePool, Predictor, PredictSettings
from graft.registry import ModelRegistry
from graft.store import JobStore, open_store
from graft.supervisor import embedded_supervisors
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class Built:
    """An API server, built and not yet started, with what shutdown needs."""

    server: grpc.aio.Server
    services: Services
    health: HealthServicer
    gate: DrainGate
    metrics: ServerMetrics
    health_server: grpc.aio.Server | None = None  # the plaintext health port's, if any


# How often the stream watcher polls a store that notifies changes (PostgreSQL): only to
# catch a lost notification. A store that does not (SQLite) is polled every 0.25 s at most.
NOTIFIED_WATCH_SECONDS = 2.0


def watch_interval(store: JobStore, config: Config) -> float:
    """The stream watcher's poll interval for `store`: no polling where notification is
    possible, beyond a safety net (docs/SCALING.md)."""
    if store.notifies_changes:
        return NOTIFIED_WATCH_SECONDS
    return min(0.25, config.poll_seconds)


def build_server(config: Config, metrics: ServerMetrics | None = None) -> Built:
    """The grpc.aio server with every service and interceptor; call inside the event loop
    that will run it."""
    metrics = metrics or ServerMetrics()
    store = open_store(config)
    registry = ModelRegistry(store, config.registry_dir)
    store_pool = futures.ThreadPoolExecutor(config.store_threads, thread_name_prefix="store")
    predict_settings = PredictSettings.from_config(config)
    predict_pool = DecodePool(predict_settings.decode_threads)  # runners are the Predictor's
    services = Services(
        config=config,
        store=store,
        predictor=Predictor(
            registry,
            store,
            config.model_cache_size,
            metrics=metrics,
            settings=predict_settings,
            decode_pool=predict_pool,
        ),
        draining=threading.Event(),
        watcher=StoreWatcher(store, store_pool, interval=watch_interval(store, config)),
        store_pool=store_pool,
        predict_pool=predict_pool,
    )
    gate = DrainGate(services.draining)
    admission = AdmissionInterceptor(
        SERVICE_NAME, parse_limits(config.rpc_limits), observe=metrics.observe_admission
    )
    auth = AuthInterceptor(
        SERVICE_NAME,
        enabled=config.auth_enabled,
        open_services=config.auth_open_services,
        store=store,
        executor=store_pool,
    )
    server = grpc.aio.server(
        # Outermost first. Metrics records the status the others set; the error boundary
        # turns auth's Unauthenticated, admission's ResourceExhausted (and every domain
        # error) into its status; a caller without a valid key takes no admission slot.
        interceptors=[
            MetricsInterceptor(metrics),
            gate,
            ErrorBoundaryInterceptor(),
            auth,
            admission,
        ],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_AdaptationServiceServicer_to_server(AdaptationServicer(services), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    return Built(server, services, health_servicer, gate, metrics)


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS from the configured PEM files, mTLS when a client CA is set; None: plaintext.
    ValueError names a file that cannot be read."""
    if not config.tls_cert:
        return None

    def read(path: str, what: str, marker: bytes) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
        if marker not in data:
            raise ValueError(f"the {what} {path} is not PEM (no '{marker.decode()}')")
        return data

    certificate = b"-----BEGIN CERTIFICATE-----"
    chain = read(config.tls_cert, "TLS certificate (tls_cert)", certificate)
    key = read(config.tls_key, "TLS private key (tls_key)", b"PRIVATE KEY-----")
    client_ca = (
        read(config.tls_client_ca, "client CA (tls_client_ca)", certificate)
        if config.tls_client_ca
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start(built: Built, address: str) -> int:
    """Bind, start serving and watching; returns the bound port (0: could not bind).
    TLS as the config says (ValueError for unreadable certificate files), and the
    plaintext health port when one is configured."""
    config = built.services.config
    for name in ("", SERVICE_NAME, WORKER_HEALTH_NAME):  # until the monitor says otherwise
        await built.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    credentials = server_credentials(config)
    if credentials is None:
        port = built.server.add_insecure_port(address)
    else:
        try:
            port = built.server.add_secure_port(address, credentials)
        except RuntimeError:  # gRPC logs why; the usual one is a key that fits no certificate
            raise ValueError(
                f"could not serve TLS on {address}: the address is taken, or {config.tls_key}"
                f" is not the private key of {config.tls_cert}"
            ) from None
    if port == 0:
        return 0
    if config.health_port:
        # The same HealthServicer: both ports say NOT_SERVING together when draining.
        built.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(built.health, built.health_server)
        if built.health_server.add_insecure_port(f"{config.host}:{config.health_port}") == 0:
            return 0
        await built.health_server.start()
    await built.server.start()
    built.services.watcher.start()
    return port


async def shutdown(built: Built, grace_seconds: float, on_draining: Callable[[], None]) -> None:
    """Drain: NOT_SERVING, refuse new RPCs, wait for in-flight ones (at most
    `grace_seconds`), stop the server, release the pools and the store."""
    services = built.services
    services.draining.set()
    services.watcher.wake_all()  # open streams see the drain now and end (UNAVAILABLE)
    await built.health.enter_graceful_shutdown()
    on_draining()
    if not await built.gate.wait_idle(grace_seconds):
        log.warning("RPCs still running after %.0f s of draining: aborting them", grace_seconds)
    await services.watcher.stop()  # wakes streams and waiters: they see the drain and end
    await built.server.stop(0.5)
    if built.health_server is not None:
        await built.health_server.stop(0.5)
    services.predictor.close()  # queued Predict calls get UNAVAILABLE; runners stop
    services.predict_pool.shutdown(wait=False, cancel_futures=True)
    # Store calls take milliseconds: let the running ones (a cancelled Advise's
    # cancel_task among them) finish before the store closes their connections.
    await asyncio.to_thread(services.store_pool.shutdown, wait=True, cancel_futures=True)
    services.store.close()


async def serve(config: Config) -> int:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = ServerMetrics()
    metrics.set_build_info()
    try:
        built = build_server(config, metrics)
    except GraftError as exc:  # the store is unreachable, or its schema newer than this code
        log.error("cannot open the job store %s: %s", config.store_name, exc.message)
        return 1
    try:
        port = await start(built, f"{config.host}:{config.port}")
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if port == 0:
        log.error(
            "could not bind %s:%d (or health port %d)", config.host, config.port, config.health_port
        )
        return 1
    metrics_port = 0
    if config.metrics_port:
        metrics.registry.register(StoreCollector(built.services.store, config.worker_ready_seconds))
        authorize = admin_scrapes(built.services.store) if config.metrics_auth else None
        metrics_port = serve_metrics(metrics.registry, config.metrics_port, config.host, authorize)
        log.info("metrics on http://%s:%d/metrics", config.host, metrics_port)
    monitor = HealthMonitor(built.health, built.services)
    supervisors = embedded_supervisors(config) if config.embedded_worker else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    for supervisor in supervisors:
        supervisor.start()
    await monitor.start()  # SERVING once the store answers
    _write_ready_file(config, port, metrics_port)
    log.info(
        "graft serving on %s:%d (%s, API keys %s; data dir %s)",
        config.host,
        port,
        "mTLS" if config.tls_client_ca else "TLS" if config.tls_cert else "plaintext",
        "required" if config.auth_enabled else "off",
        config.data_dir,
    )
    if not config.auth_enabled and config.auth == "off" and not is_loopback(config.host):
        log.warning("authentication is off on %s: every caller is an admin", config.host)
    if config.auth_enabled and not config.tls_cert and not is_loopback(config.host):
        log.warning("API keys travel in plaintext: serve TLS (--tls-cert) or terminate it in front")

    await stop.wait()
    await monitor.stop()

    def stop_workers() -> None:  # they checkpoint while RPCs drain
        for supervisor in supervisors:
            supervisor.request_stop()

    await shutdown(built, config.grace_seconds, stop_workers)
    # A worker stops at its next checkpoint, or at the next step after its stop timeout;
    # past this much longer, it is killed (its lease then lapses: no loss).
    timeout = config.stop_timeout_seconds + config.grace_seconds + 30
    await asyncio.gather(*(asyncio.to_thread(s.stop, timeout) for s in supervisors))
    log.info("graft stopped")
    return 0


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    log.info("received signal %d: draining", signum)
    stop.set()


def run_server(config: Config) -> int:
    setup_logging(config.log_format, config.log_level, process="server")
    log.info("config: %s", config.public_json())
    return asyncio.run(serve(config))


class BackgroundServer:
    """An API server on its own event loop in a background thread, for tests, benchmarks
    and embedding: `with BackgroundServer(config) as s: Client(s.target)`. No worker process
    is started; `advisor=True` runs an advisor lane in a thread of this process (for
    in-process tests of Advise and uploads: a deployment runs it in a worker process).
    `call(coro)` runs a coroutine on the server's loop."""

    def __init__(
        self, config: Config, metrics: ServerMetrics | None = None, *, advisor: bool = False
    ) -> None:
        import torch

        self.config = config
        self.metrics = metrics or ServerMetrics()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-server")
        self._thread.daemon = True
        self._thread.start()
        self.built: Built = self.call(self._build())
        self._lane_stop = threading.Event()
        self._lane: threading.Thread | None = None
        try:
            self.port = self.call(start(self.built, f"{config.host}:0"))
            if self.port == 0:
                raise OSError(f"could not bind {config.host}")
        except BaseException:
            self.stop()  # nothing left running: the loop, the pools, the store
            raise
        if advisor:
            from graft.advisor.lane import AdvisorLane

            lane = AdvisorLane(
                config,
                self.built.services.store,
                "in-process",
                torch.device("cpu"),
                self._lane_stop,
            )
            self._lane = threading.Thread(target=lane.run, name="advisor-lane", daemon=True)
            self._lane.start()

    async def _build(self) -> Built:
        return build_server(self.config, self.metrics)

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def services(self) -> Services:
        return self.built.services

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_seconds: float = 0.0) -> None:
        self._lane_stop.set()
        if self._lane is not None:
            self._lane.join(timeout=30)
        if self.loop.is_running():
            self.call(shutdown(self.built, grace_seconds, lambda: None), timeout=grace_seconds + 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_ready_file(config: Config, port: int, metrics_port: int) -> None:
    """Record the bound ports (useful with --port 0) for scripts and tests."""
    info = {"port": port, "metrics_port": metrics_port, "pid": os.getpid(), "time": time.time()}
    path = config.data_dir / "server.json"
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
