"""Metrics and logs: the gRPC server metrics through a real in-process server and channel,
the store gauges, the JSON log lines."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

import graft_client
from graft.api.health import WORKER_HEALTH_NAME, HealthMonitor
from graft.config import Config
from graft.observability.logs import log_context, setup_logging
from graft.observability.metrics import ServerMetrics
from graft.observability.store_metrics import StoreCollector
from graft.server import BackgroundServer
from graft_client import Client, pb

SERVICE = "graft.v1.AdaptationService"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Client, ServerMetrics, Config]]:
    root = tmp_path / "datasets"
    for label in ("a", "b"):
        (root / "two" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8, 3), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(root / "two" / label / f"{i}.png")
    config = Config(data_dir=tmp_path / "data", data_roots=(root,), embedded_worker=False)
    metrics = ServerMetrics()
    with BackgroundServer(config, metrics, advisor=True) as server:
        metrics.registry.register(StoreCollector(server.services.store, 15))
        with Client(server.target, timeout=30) as client:
            yield client, metrics, config


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def rpc(method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method}


def test_grpc_server_metrics_for_unary_and_streaming_rpcs(
    running: tuple[Client, ServerMetrics, Config],
) -> None:
    client, metrics, config = running
    client.list_backbones()
    client.list_backbones()
    with pytest.raises(graft_client.NotFound):
        client.get_job("0" * 32)
    with pytest.raises(graft_client.InvalidArgument):
        client.start_fine_tune("bad name!", str(config.data_roots[0] / "two"))

    assert value(metrics, "grpc_server_started_total", **rpc("ListBackbones")) == 2
    assert value(metrics, "grpc_server_handled_total", **rpc("ListBackbones"), grpc_code="OK") == 2
    assert value(metrics, "grpc_server_msg_received_total", **rpc("ListBackbones")) == 2
    assert value(metrics, "grpc_server_msg_sent_total", **rpc("ListBackbones")) == 2
    assert value(metrics, "grpc_server_handling_seconds_count", **rpc("ListBackbones")) == 2
    assert value(metrics, "grpc_server_handled_total", **rpc("GetJob"), grpc_code="NotFound") == 1
    assert value(metrics, "grpc_server_msg_sent_total", **rpc("GetJob")) == 0
    handled_bad = value(
        metrics, "grpc_server_handled_total", **rpc("StartFineTune"), grpc_code="InvalidArgument"
    )
    assert handled_bad == 1

    # A server stream: a queued job, cancelled at once, then followed to its end.
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1, image_size=32)
    job = client.start_fine_tune("two", str(config.data_roots[0] / "two"), plan=plan)
    client.cancel_job(job.job_id)
    events = list(client.stream_progress(job.job_id))
    stream = rpc("StreamProgress", "server_stream")
    assert value(metrics, "grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert value(metrics, "grpc_server_msg_received_total", **stream) == 1
    assert value(metrics, "grpc_server_msg_sent_total", **stream) == len(events) >= 2

    # A client stream: an upload in three chunks.
    archive = Path(config.data_dir) / "two.tar"
    import tarfile

    with tarfile.open(archive, "w") as tar:
        tar.add(config.data_roots[0] / "two", arcname="two")
    size = archive.stat().st_size
    client.upload_dataset(archive, chunk_size=size // 3 + 1)
    upload = rpc("UploadDataset", "client_stream")
    assert value(metrics, "grpc_server_msg_received_total", **upload) == 3
    assert value(metrics, "grpc_server_handled_total", **upload, grpc_code="OK") == 1

    # The store's gauges, read at scrape time.
    assert value(metrics, "graft_store_up") == 1
    assert value(metrics, "graft_jobs", state="cancelled") == 1
    assert value(metrics, "graft_jobs", state="queued") == 0
    assert value(metrics, "graft_queue_depth") == 0
    assert value(metrics, "graft_registry_model_versions") == 0
    assert value(metrics, "graft_workers_ready") == 0


def test_health_follows_store_and_workers(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", embedded_worker=False)
    server = BackgroundServer(config)
    services = server.services
    monitor = HealthMonitor(server.built.health, services, interval=3600)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(name: str) -> int:
                request = health_pb2.HealthCheckRequest(service=name)
                return stub.Check(request, timeout=5).status

            serving, not_serving = (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            assert status("") == not_serving  # before start
            server.call(monitor.start())
            assert status("") == serving and status(SERVICE) == serving
            assert status(WORKER_HEALTH_NAME) == not_serving  # no worker yet
            services.store.heartbeat_worker("w1", 1, "host", {})
            server.call(monitor.check())
            assert status(WORKER_HEALTH_NAME) == serving
            services.store.close()  # the store stops answering
            server.call(monitor.check())
            assert status("") == not_serving and status(WORKER_HEALTH_NAME) == not_serving
    finally:
        server.call(monitor.stop())
        server.stop()


def test_json_log_lines_carry_the_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", "info", process="worker")
    log = logging.getLogger("graft.test")
    with log_context(job_id="j-1", worker_id="w-1"):
        log.info("epoch %d done", 3)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
    log.debug("not shown at info")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "epoch 3 done" and first["level"] == "info"
    assert (first["job_id"], first["worker_id"], first["process"]) == ("j-1", "w-1", "worker")
    assert first["logger"] == "graft.test" and first["time"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc_info"]

    setup_logging("text", "info")
    with log_context(method="Predict", request_id="r-9"):
        log.warning("slow")
    text = capsys.readouterr().err
    assert "WARNING graft.test: slow (method=Predict request_id=r-9)" in text
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml")


def test_store_collector_reports_a_store_that_does_not_answer() -> None:
    class Broken:
        def count_jobs_by_state(self) -> None:
            raise OSError("disk gone")

    collector = StoreCollector(Broken(), worker_ready_seconds=15, clock=time.time)
    families = {f.name: f for f in collector.collect()}
    assert list(families) == ["graft_store_up"]
    assert families["graft_store_up"].samples[0].value == 0


def test_draining_refuses_new_rpcs_with_unavailable_and_counts_them(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", embedded_worker=False)
    metrics = ServerMetrics()
    server = BackgroundServer(config, metrics)
    gate, services = server.built.gate, server.services
    try:
        with Client(server.target, timeout=10) as client:
            client.list_backbones()
            assert server.call(gate.wait_idle(5))  # nothing runs between calls, none arrives
            services.draining.set()
            with pytest.raises(graft_client.Unavailable, match="shutting down"):
                client.list_backbones()
        with grpc.insecure_channel(server.target) as channel:  # health still answers
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            # An open health Watch is not an RPC the drain waits for.
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            next(watch)
            assert server.call(gate.wait_idle(5))
            watch.cancel()
    finally:
        server.stop()
    refused = value(
        metrics, "grpc_server_handled_total", **rpc("ListBackbones"), grpc_code="Unavailable"
    )
    assert refused >= 1  # the client's transparent retries may add more
    assert value(metrics, "grpc_server_handled_total", **rpc("ListBackbones"), grpc_code="OK") == 1
